"""PEZ on OpenCLIP models: presets (``presets``), the model (``model``), loading and caching (``loading``),
downloads (``download``), the tokenizer (``tokenizer``), images (``images``), the objective and its scorer
(``objective``), several models at once (``joint``) and the user tasks (``tasks``)."""
from .joint import JointModel, JointResult, JointScorer, combine, joint_members
from .loading import cached_models, clear_cache, load_model, preset_is_cached, preset_of_checkpoint
from .model import MAX_PROMPT_TOKENS, PRECISIONS, PezModel
from .objective import ClipScorer, Objective, optimize
from .presets import (CHECKPOINT_SUFFIXES, DEFAULT_FLUENCY_MODEL, DEFAULT_MODEL, JOINT_PRESETS, PRESETS,
                      available_models, bundled_models, preset_of_file)
from .tasks import DEFAULT_NEGATIVE_WEIGHT, distill, invert, score, score_each, style
from .tokenizer import allowed_token_ids, clip_tokenizer

__all__ = ["CHECKPOINT_SUFFIXES", "ClipScorer", "DEFAULT_FLUENCY_MODEL", "DEFAULT_MODEL", "DEFAULT_NEGATIVE_WEIGHT", "JOINT_PRESETS",
           "JointModel", "JointResult", "JointScorer", "MAX_PROMPT_TOKENS", "Objective", "PRECISIONS", "PRESETS",
           "PezModel", "allowed_token_ids", "available_models", "bundled_models", "cached_models", "clear_cache",
           "clip_tokenizer", "combine", "distill", "invert", "joint_members", "load_model", "optimize",
           "preset_is_cached", "preset_of_checkpoint", "preset_of_file", "score", "score_each", "style"]
