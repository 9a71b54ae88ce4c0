"""pez_core: hard prompts made easy (PEZ) on OpenCLIP models — a library, a CLI, no ComfyUI.

    >>> import pez_core
    >>> model = pez_core.load_model("ViT-L-14 · openai")
    >>> [result] = pez_core.invert(model, [image], pez_core.PezConfig(steps=1000))
    >>> result.prompt, result.similarity
"""
from .engine import LR_RANGE, LR_SCHEDULES, MAX_RESTARTS, MAX_STEPS, PezConfig, PezResult, Progress, optimize, search
from .errors import ModelLoadError, PezError, WeightsNotAvailableError
from .joint import JointModel, JointResult, JointScorer, combine
from .models import JOINT_PRESETS, MAX_PROMPT_TOKENS, PRECISIONS, PRESETS, PezModel, available_models, clear_cache, load_model
from .objective import ClipScorer, Objective
from .polish import POLISH_MODES, polish_prompts
from .scorer import Scorer
from .tasks import DEFAULT_NEGATIVE_WEIGHT, distill, invert, score, score_each, style
from .vocab import VOCAB_MODES, allowed_token_ids

__all__ = [
    "DEFAULT_NEGATIVE_WEIGHT", "JOINT_PRESETS", "JointModel", "JointResult", "JointScorer", "combine", "score_each",
    "LR_RANGE", "LR_SCHEDULES", "MAX_PROMPT_TOKENS", "MAX_RESTARTS", "MAX_STEPS", "POLISH_MODES", "PRECISIONS",
    "PRESETS", "VOCAB_MODES", "ClipScorer", "ModelLoadError", "Objective", "PezConfig", "PezError", "PezModel",
    "PezResult", "Progress", "Scorer", "WeightsNotAvailableError", "allowed_token_ids", "available_models",
    "clear_cache", "distill", "invert", "load_model", "optimize", "polish_prompts", "score", "search", "style",
]
__version__ = "0.1.0"
