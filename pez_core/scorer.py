"""The model side of a PEZ search: what the engine asks of whatever it optimises prompts for."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F


class Scorer:
    """What a PEZ run maximises (``objective.ClipScorer`` for a CLIP): the model side of the search.

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

    def gains(self, prompts: torch.Tensor, problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(gain to maximise, similarity to report), each (N,), of prompt embeddings (N, L, D) for their
        problems (N,); differentiable in ``prompts``."""
        raise NotImplementedError

    def score_texts(self, texts: Sequence[str], problems: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same for prompts given as strings, read as a user's tools will read them (no gradient)."""
        raise NotImplementedError

    def prompts_that_fit(self, prompt_len: int) -> int:
        """How many prompts one step can push through the model at once."""
        raise NotImplementedError

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
