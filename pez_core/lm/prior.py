"""A causal language model as the fluency prior of a search (``pez_core.engine.prior.TextPrior``).

It reads prompt strings with its own tokenizer, so it serves any optimised model: the mean
log-probability per token of a string between the model's start and end tokens, and its likely next
words. The end token counts: a prompt cut short ("a") is unlikely to end there, so a short prompt is not
preferred for being short.
"""
from __future__ import annotations

import copy
import logging
import math
import re
from functools import lru_cache
from typing import Sequence

import torch

from ..common.devices import hub_offline
from ..common.errors import ModelLoadError, PezError, WeightsNotAvailableError
from ..demo import CAPTION_LM
from .model import LanguageModel, load_lm, token_texts

log = logging.getLogger(__name__)

# fluency_model names the library knows: (where the weights are, what a download costs)
FLUENCY_PRESETS = {
    CAPTION_LM: (CAPTION_LM, "bundled, 0.7 MB"),   # offline: the shapes-demo world's captions
    "gpt2": ("openai-community/gpt2", "124M parameters, a 0.55 GB download"),
    "smollm2-135m": ("HuggingFaceTB/SmolLM2-135M", "135M parameters, a 0.27 GB download"),
}
TEXTS_PER_CALL = 256          # strings through the model at once
CACHE_SIZE = 1 << 16          # polishing scores many strings again (kicks, combined swaps)
_WORD = re.compile(r" ?[A-Za-z]+")


class LmPrior:
    """``TextPrior`` over a ``LanguageModel``; scores are cached by string."""

    def __init__(self, lm: LanguageModel, name: str | None = None):
        self.lm, self.name = lm, name or lm.name
        self.cache: dict[str, float] = {}
        self.token_texts = token_texts(lm.tokenizer)
        specials = set(lm.tokenizer.all_special_ids)
        self.word_ids = torch.tensor([i for i, t in enumerate(self.token_texts)
                                      if _WORD.fullmatch(t) and i not in specials], device=lm.device)

    def scoped(self) -> "LmPrior":
        scoped = copy.copy(self)
        scoped.cache = {}
        return scoped

    def log_probs(self, texts: Sequence[str]) -> list[float]:
        known = {t: self.cache[t] for t in texts if t in self.cache}
        missing = list(dict.fromkeys(t for t in texts if t not in known))
        for start in range(0, len(missing), TEXTS_PER_CALL):
            chunk = missing[start:start + TEXTS_PER_CALL]
            known.update(zip(chunk, self._mean_log_probs(chunk)))
        if len(self.cache) + len(missing) > CACHE_SIZE:  # full: start again rather than grow without bound
            self.cache.clear()
        self.cache.update((t, known[t]) for t in missing[:CACHE_SIZE])
        return [known[t] for t in texts]

    @torch.no_grad()
    def _mean_log_probs(self, texts: list[str]) -> list[float]:
        end = self.lm.tokenizer.eos_token_id
        ids, mask = self._batch([self.lm.encode(t) + ([end] if t and end is not None else []) for t in texts])
        logits = self.lm.model(input_ids=ids, attention_mask=mask).logits.float()
        token_lp = logits[:, :-1].log_softmax(-1).gather(-1, ids[:, 1:, None])[..., 0]
        real = mask[:, 1:].float()
        counts = real.sum(1)
        means = (token_lp * real).sum(1) / counts.clamp(min=1)
        return [m if n > 0 else -math.inf for m, n in zip(means.tolist(), counts.tolist())]

    @torch.no_grad()
    def next_words(self, prefixes: Sequence[str], count: int) -> list[list[str]]:
        if not prefixes:
            return []
        ids, mask = self._batch([self.lm.encode(p) for p in prefixes], keep="last")
        lengths = mask.sum(1) - 1
        logits = self.lm.model(input_ids=ids, attention_mask=mask).logits.float()
        last = logits[torch.arange(len(prefixes)), lengths]  # after each prefix
        top = last[:, self.word_ids].topk(min(count, len(self.word_ids)), dim=-1).indices
        return [[self.token_texts[i].strip() for i in self.word_ids[row].tolist()] for row in top]

    def _batch(self, encoded: list[list[int]], keep: str = "first") -> tuple[torch.Tensor, torch.Tensor]:
        """The start token, then each sequence, right-padded; and the mask of real tokens. A sequence longer
        than the model reads keeps its ``first`` tokens (scoring) or its ``last`` (what comes next)."""
        room = (self.lm.positions or 1 << 20) - 1  # after the start token
        encoded = [e if len(e) <= room else (e[:room] if keep == "first" else e[-room:]) for e in encoded]
        start, width = self.lm.start_id, 1 + max(len(e) for e in encoded)
        ids = torch.full((len(encoded), width), start, dtype=torch.long)
        mask = torch.zeros((len(encoded), width), dtype=torch.long)
        for row, e in enumerate(encoded):
            ids[row, 1:1 + len(e)] = torch.tensor(e, dtype=torch.long)
            mask[row, :1 + len(e)] = 1
        return ids.to(self.lm.device), mask.to(self.lm.device)


@lru_cache(maxsize=2)
def load_prior(name: str, device: str = "auto") -> LmPrior:
    """The fluency prior ``name``: a key of ``FLUENCY_PRESETS``, a Hugging Face name or a model folder.
    Downloads only what is not offline (``HF_HUB_OFFLINE``)."""
    if not isinstance(name, str) or not name.strip():
        raise PezError(f"fluency model must be a language model's name or path, got {name!r}")
    source, size = FLUENCY_PRESETS.get(name, (name, "size unknown"))
    log.info("fluency prior: loading %s (%s)", source, size)
    try:
        return LmPrior(load_lm(source, device=device, allow_download=True), name)
    except ModelLoadError as e:
        offline = " This machine is offline (HF_HUB_OFFLINE)." if hub_offline() else ""
        raise WeightsNotAvailableError(
            f"readable prompts need the language model {name!r} ({size}), which could not be loaded: {e}."
            f"{offline} Download it once with network access (it goes to the Hugging Face cache), give another "
            f"fluency_model (a local folder works), or turn readability off (fluency 0).") from e
