"""A language prior over prompt *strings*: how a prompt reads, whatever tokenizer the optimised model has.

Polishing scores every candidate as a decoded string, so any language model can judge it there: the gain
becomes ``similarity + fluency x mean log-probability per token`` of the string under the prior. The mean,
not the sum, so a short prompt is not preferred for being short. The prior also proposes words: its most
likely next words after each prefix of a prompt are tried at that position beside the gradient's choices.
``pez_core.lm.prior`` has the implementation for causal language models.
"""
from __future__ import annotations

import math
from typing import Protocol, Sequence

FLUENCY_MAX = 10.0  # a weight past this only ranks by the prior: the similarity no longer counts
READABLE_FLUENCY = 0.02  # the weight "readable" means: measured, benchmarks/README.md "Readable prompts"


class TextPrior(Protocol):
    name: str  # what the result and the logs call it

    def log_probs(self, texts: Sequence[str]) -> list[float]:
        """Mean log-probability per token of each text, as the prior tokenizes it (higher reads better)."""
        ...

    def next_words(self, prefixes: Sequence[str], count: int) -> list[list[str]]:
        """Up to ``count`` most likely next whole words after each prefix ("" : the first word)."""
        ...

    def scoped(self) -> "TextPrior":
        """The same prior with a cache of its own, empty: what it returns then depends only on what it is
        asked from now on (a score's last bits can depend on the strings it was computed beside)."""
        ...


def perplexity(log_prob: float) -> float:
    """Per-token perplexity of a mean log-probability."""
    return math.exp(-log_prob)
