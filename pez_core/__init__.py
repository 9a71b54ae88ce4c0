"""pez_core: hard prompts made easy (PEZ) on OpenCLIP models — a library, a CLI, no ComfyUI.

    >>> import pez_core
    >>> model = pez_core.load_model("ViT-L-14 · openai")
    >>> [result] = pez_core.invert(model, [image], pez_core.PezConfig(steps=1000))
    >>> result.prompt, result.similarity

Layers (imports flow down only; ``pyproject.toml`` declares them for import-linter): ``cli`` on top;
``clip``, which reads prompts with a language model as its fluency prior; ``lm``, language models (the
prior, and PEZ on an LM's own task); ``engine``, the model-agnostic PEZ search; ``common`` and ``demo``
at the bottom.
"""
import importlib

# public name -> the layer that defines it; loaded on first use, so that importing ``pez_core.engine`` (or
# ``pez_core.lm``) does not import open_clip through this file
_HOMES = {
    ".clip": ("DEFAULT_NEGATIVE_WEIGHT", "JOINT_PRESETS", "MAX_PROMPT_TOKENS", "PRECISIONS", "PRESETS",
                      "ClipScorer", "JointModel", "JointResult", "JointScorer", "Objective", "PezModel",
                      "allowed_token_ids", "available_models", "clear_cache", "combine", "distill", "invert",
                      "load_model", "optimize", "score", "score_each", "style",
                      # what the ComfyUI nodes need besides
                      "CHECKPOINT_SUFFIXES", "DEFAULT_MODEL", "bundled_models", "cached_models", "clip_tokenizer",
                      "joint_members", "preset_of_file", "preset_of_checkpoint", "preset_is_cached",
                      "DEFAULT_FLUENCY_MODEL"),
    ".clip.download": ("size_text",),
    ".common.errors": ("MissingFile", "ModelLoadError", "PezError", "WeightsNotAvailableError"),
    ".common.limits": ("check_text", "set_interrupt_check"),
    ".engine.prior": ("FLUENCY_MAX", "READABLE_FLUENCY", "TextPrior"),
    ".engine.template": ("Template", "join_prompts"),
    ".lm.prior": ("FLUENCY_PRESETS", "LmPrior", "load_prior"),
    ".engine": ("LR_RANGE", "LR_SCHEDULES", "MAX_RESTARTS", "MAX_STEPS", "POLISH_MODES", "VOCAB_MODES",
                        "PezConfig", "PezResult", "Progress", "Scorer", "polish_prompts", "search", "PRUNE_BUDGET"),
}
_HOME_OF = {name: module for module, names in _HOMES.items() for name in names}


_LAYERS = ("cli", "clip", "common", "dataset", "demo", "engine", "lm")


def __getattr__(name: str):
    if name in _LAYERS:
        return importlib.import_module(f".{name}", __name__)
    if name not in _HOME_OF:
        raise AttributeError(f"module 'pez_core' has no attribute {name!r}")
    value = getattr(importlib.import_module(_HOME_OF[name], __name__), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_HOME_OF])


__all__ = [
    "DEFAULT_NEGATIVE_WEIGHT", "JOINT_PRESETS", "JointModel", "JointResult", "JointScorer", "combine", "score_each",
    "LR_RANGE", "LR_SCHEDULES", "MAX_PROMPT_TOKENS", "MAX_RESTARTS", "MAX_STEPS", "POLISH_MODES", "PRECISIONS",
    "PRESETS", "VOCAB_MODES", "ClipScorer", "MissingFile", "ModelLoadError", "Objective", "PezConfig", "PezError",
    "PezModel", "PezResult", "Progress", "Scorer", "WeightsNotAvailableError", "allowed_token_ids", "available_models",
    "check_text", "clear_cache", "distill", "invert", "load_model", "optimize", "polish_prompts", "score",
    "search", "set_interrupt_check", "style",
    "CHECKPOINT_SUFFIXES", "DEFAULT_MODEL", "PRUNE_BUDGET", "bundled_models", "cached_models", "clip_tokenizer",
    "joint_members", "preset_of_file", "preset_of_checkpoint", "preset_is_cached", "size_text",
    "DEFAULT_FLUENCY_MODEL", "FLUENCY_MAX", "FLUENCY_PRESETS", "LmPrior",
    "READABLE_FLUENCY", "TextPrior", "load_prior", "Template", "join_prompts",
]
__version__ = "0.1.0"
