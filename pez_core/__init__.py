"""pez_core: hard prompts made easy (PEZ) on OpenCLIP models — a library, a CLI, no ComfyUI.

    >>> import pez_core
    >>> model = pez_core.load_model("ViT-L-14 · openai")
    >>> [result] = pez_core.invert(model, [image], pez_core.PezConfig(steps=1000))
    >>> result.prompt, result.similarity
"""
from .engine import Objective, PezConfig, PezResult, Progress, optimize
from .errors import ModelLoadError, PezError, WeightsNotAvailableError
from .models import PRESETS, PezModel, available_models, clear_cache, load_model
from .tasks import distill, invert, score, style
from .vocab import VOCAB_MODES, allowed_token_ids

__all__ = [
    "PRESETS", "VOCAB_MODES", "ModelLoadError", "Objective", "PezConfig", "PezError", "PezModel",
    "PezResult", "Progress", "WeightsNotAvailableError", "allowed_token_ids", "available_models",
    "clear_cache", "distill", "invert", "load_model", "optimize", "score", "style",
]
__version__ = "0.1.0"
