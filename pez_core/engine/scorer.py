"""The model side of a PEZ search: what the engine asks of whatever it optimises prompts for.

How to add a model family (CLIP in ``pez_core.clip``, causal LMs in ``pez_core.lm`` show both ways):

1. Make a package beside them, ``pez_core/<family>/``; it may import ``pez_core.engine`` and
   ``pez_core.common``, never another family, the CLI or ComfyUI (``pyproject.toml``'s import-linter
   contracts refuse it). Import the family's heavy library (e.g. transformers) there only.
2. Subclass ``Scorer``: set ``device``, ``problems``, ``allowed`` and ``table`` in ``__init__``; say
   ``max_prompt_len`` and ``prompt_len_note``; write ``gains``, ``score_texts``, ``decode``, ``tokenize`` and
   ``bytes_per_prompt`` (use ``activation_bytes``). Build ``allowed`` with
   ``pez_core.engine.vocabulary.restrict_vocabulary`` so modes, word lists and errors stay the same.
3. A task function builds the scorer and calls ``pez_core.engine.search(scorer, config, callback)``: the
   projection, restarts, stopping rules, polishing and the CUDA graph come for free.
4. Add its subcommand to ``pez_core/cli.py`` (shared options come from there), its public names to its
   ``__init__``, its tests under ``tests/<family>/`` and its optional dependency to ``pyproject.toml``.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..common import devices

# what backward keeps per prompt position, model width and layer, in elements of the model's dtype: measured
# 10.1-11.2 for open_clip's text blocks (tests check the bound), plus headroom; every family sizes batches by it
ACTIVATION_ELEMENTS = 16


def activation_bytes(positions: int, width: int, layers: int, itemsize: int) -> int:
    """What one sequence's backward keeps, bounded by ``ACTIVATION_ELEMENTS``."""
    return ACTIVATION_ELEMENTS * positions * width * layers * itemsize


class Scorer:
    """What a PEZ run maximises (``pez_core.clip.objective.ClipScorer`` for a CLIP): the model side of the search.

    A scorer sets ``device``, ``problems`` (independent prompts to find, e.g. one per image), ``allowed``
    (the token ids a prompt may use, on ``device``) and ``table`` (V, D), the token embeddings the soft
    prompt moves among; the methods below say how prompts score. The projection is the nearest allowed
    row by cosine unless a scorer redefines its keys and queries (e.g. several models at once).
    """
    device: torch.device
    problems: int
    allowed: torch.Tensor
    table: torch.Tensor
    # strings ``score_texts`` scores for the cost of one prompt in one PEZ step (forward and backward):
    # polishing's kicks are budgeted in it, so the budget means about the same time for every model family
    strings_per_step_prompt: float = 1.0
    max_prompt_len: int        # the longest prompt the model reads (checked by ``PezConfig.validate``)
    prompt_len_note: str       # why, for the error (e.g. "CLIP's limit")

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain to maximise, similarity to report), each (N,), of prompt embeddings (N, L, D) for their
        problems (N,); differentiable in ``prompts``."""
        raise NotImplementedError

    def score_texts(self, texts: Sequence[str], problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for prompts given as strings, read as a user's tools will read them (no gradient)."""
        raise NotImplementedError

    def bytes_per_prompt(self, prompt_len: int) -> int:
        """Memory one prompt's forward and backward keep in a step."""
        raise NotImplementedError

    def problem_keys(self) -> list[bytes]:
        """What each problem is (e.g. its targets' bytes): a batch-invariant run seeds each problem from it."""
        raise NotImplementedError(f"{type(self).__name__} does not support batch-invariant runs")

    def prompts_that_fit(self, prompt_len: int) -> int:
        """How many prompts one step can push through the model at once in half the free memory."""
        return max(1, devices.free_memory(self.device) // 2 // max(1, self.bytes_per_prompt(prompt_len)))

    def decode(self, ids: Sequence[int]) -> str:
        raise NotImplementedError

    def tokenize(self, text: str) -> list[int]:
        raise NotImplementedError

    def projection_keys(self) -> torch.Tensor:
        """(A, K) one row per allowed token; a prompt position projects to the row its query scores highest."""
        return F.normalize(self.table[self.allowed].float(), dim=-1)

    def projection_queries(self, soft: torch.Tensor) -> torch.Tensor:
        """(..., K) the query of every position of a soft prompt (..., D)."""
        return F.normalize(soft, dim=-1)
