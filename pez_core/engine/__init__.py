"""The model-agnostic PEZ search: settings (``config``), the loop (``engine``), its stopping rules
(``stopping``), polishing (``polish``), the CUDA-graph step (``cuda_graph``), the vocabulary rules
(``vocabulary``) and what a model family provides (``scorer.Scorer``, with the checklist for adding one).

Imports neither open_clip nor transformers (a test checks it in a fresh process).
"""
from .config import (LR_RANGE, LR_SCHEDULES, MAX_RESTARTS, MAX_STEPS, Callback, PezConfig, PezResult, Progress,
                     clamp_similarity)
from .loop import search
from .polish import POLISH_MODES, PRUNE_BUDGET, polish_prompts
from .scorer import ACTIVATION_ELEMENTS, Scorer
from .vocabulary import VOCAB_MODES, parse_words, restrict_vocabulary

__all__ = ["ACTIVATION_ELEMENTS", "LR_RANGE", "LR_SCHEDULES", "MAX_RESTARTS", "MAX_STEPS", "POLISH_MODES", "PRUNE_BUDGET",
           "VOCAB_MODES", "Callback", "PezConfig", "PezResult", "Progress", "Scorer", "clamp_similarity",
           "parse_words", "polish_prompts", "restrict_vocabulary", "search"]
