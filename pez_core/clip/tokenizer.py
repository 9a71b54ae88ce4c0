"""Which tokens PEZ may use.

Modes: ``full`` (every token but the special ones), ``ascii`` (tokens that read as
printable ASCII), ``words`` (whole lowercase alphabetic words, CLIP's ``</w>``
tokens). A blocklist bans every token of its words; an allowlist (a word bank)
restricts the search to the tokens of its words.
"""
from __future__ import annotations

import heapq
import re
from collections import OrderedDict
from functools import lru_cache
from typing import Iterable

import torch
from open_clip.tokenizer import SimpleTokenizer

from .errors import PezError
from .limits import check_interrupt, check_text

VOCAB_MODES = ("full", "ascii", "words")
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


def parse_words(words: str | Iterable[str] | None) -> list[str]:
    """Words from a comma/newline separated string or an iterable of strings."""
    if words is None:
        return []
    if isinstance(words, str):
        words = re.split(r"[,\n]", words)
    return [w.strip() for w in words if w and w.strip()]


def tokens_of(tokenizer, words: Iterable[str], name: str = "the word list") -> set[int]:
    ids: set[int] = set()
    for word in words:
        ids.update(tokenizer.encode(check_text(word, name)))
    return ids


def _bounded(words, name: str):
    """A word list's total size is bounded like any text, before it is split (naming the list)."""
    if words is not None and not isinstance(words, str):
        words = list(words)
        check_text("\n".join(w for w in words if isinstance(w, str)), name)
        return words
    return words if words is None else check_text(words, name)


def allowed_token_ids(tokenizer, mode: str = "words", blocklist=None, allowlist=None) -> torch.Tensor:
    """Sorted ids PEZ may choose from; raises if nothing is left."""
    if mode not in VOCAB_MODES:
        raise PezError(f"unknown vocabulary mode {mode!r}; choose one of {', '.join(VOCAB_MODES)}")
    bank = parse_words(_bounded(allowlist, "the allowlist"))
    if bank:
        allowed = tokens_of(tokenizer, bank, "the allowlist") - special_ids(tokenizer)
    else:
        allowed = set(_mode_ids(tokenizer, mode))
    allowed -= tokens_of(tokenizer, parse_words(_bounded(blocklist, "the blocklist")), "the blocklist")
    if not allowed:
        raise PezError(
            "the vocabulary is empty: the blocklist bans every allowed token"
            + (" of the allowlist" if bank else f" of mode {mode!r}")
            + "; remove words from the blocklist or widen the vocabulary")
    return torch.tensor(sorted(allowed), dtype=torch.long)
