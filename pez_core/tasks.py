"""What users ask PEZ for: invert images, find a shared style, distill a text, score prompts."""
from __future__ import annotations

import dataclasses
from typing import Sequence

import torch

from .engine import Callback, PezConfig, PezResult, optimize
from .errors import PezError
from .images import split_batch
from .models import MAX_PROMPT_TOKENS, PezModel
from .objective import Objective

DEFAULT_NEGATIVE_WEIGHT = 0.5  # how hard each negative image or text pushes the prompt away


def _negatives(model: PezModel, images, texts, weight: float) -> list[tuple[torch.Tensor, float]]:
    if not weight >= 0:
        raise PezError(f"negative_weight is how hard negatives push away; give a value >= 0, got {weight}")
    feats = []
    if images is not None and len(split_batch(images)):
        feats.extend(model.encode_images(images))
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    texts = [t for t in texts if t.strip()]
    if texts:
        feats.extend(model.encode_texts(texts))
    return [(f, -weight) for f in feats]


def _image_features(model: PezModel, images) -> torch.Tensor:
    images = split_batch(images)
    if not images:
        raise PezError("no images were given; connect at least one image")
    return model.encode_images(images)


def invert(model: PezModel, images, config: PezConfig | None = None, *, negative_images=None,
           negative_texts: str | Sequence[str] | None = None, negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
           callback: Callback | None = None) -> list[PezResult]:
    """One prompt per image; all images are optimised together in one batch."""
    feats = _image_features(model, images)
    negatives = _negatives(model, negative_images, negative_texts, negative_weight)
    targets = [[(feat, 1.0), *negatives] for feat in feats]
    return optimize(model, Objective.stack(targets), config, callback)


def style(model: PezModel, images, config: PezConfig | None = None, *, negative_images=None,
          negative_texts: str | Sequence[str] | None = None, negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
          callback: Callback | None = None) -> PezResult:
    """One prompt for all images jointly: what they share (their style, their subject)."""
    feats = _image_features(model, images)
    negatives = _negatives(model, negative_images, negative_texts, negative_weight)
    targets = [[(feat, 1.0 / len(feats)) for feat in feats] + negatives]
    return optimize(model, Objective.stack(targets), config, callback)[0]


def distill_length(model: PezModel, text: str, ratio: float) -> int:
    """Prompt length for a share ``ratio`` of the text's token count (at least 1, at most 75)."""
    if not 0 < ratio <= 1:
        raise PezError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, min(MAX_PROMPT_TOKENS, round(ratio * len(model.tokenize(text)))))


def distill(model: PezModel, text: str, config: PezConfig | None = None, *, ratio: float | None = None,
            callback: Callback | None = None) -> PezResult:
    """A shorter prompt with the meaning of ``text`` (texts over 75 tokens are chunked, not cut)."""
    if not isinstance(text, str) or not text.strip():
        raise PezError("the prompt to distill is empty; give it some words")
    config = config or PezConfig()
    if ratio is not None:
        config = dataclasses.replace(config, prompt_len=distill_length(model, text, ratio))
    target = model.encode_texts([text])[0]
    return optimize(model, Objective.stack([[(target, 1.0)]]), config, callback)[0]


def score(model: PezModel, texts: str | Sequence[str], images=None,
          other_texts: str | Sequence[str] | None = None) -> torch.Tensor:
    """Cosine similarity (n_texts, n_targets) of texts to images and/or other texts, in [-1, 1]."""
    texts = [texts] if isinstance(texts, str) else list(texts)
    if not texts:
        raise PezError("no text to score was given")
    others = [other_texts] if isinstance(other_texts, str) else list(other_texts or [])
    targets = []
    if images is not None and len(split_batch(images)):
        targets.append(model.encode_images(images))
    if others:
        targets.append(model.encode_texts(others))
    if not targets:
        raise PezError("nothing to score against: give images or other texts")
    with torch.no_grad():
        return (model.encode_texts(texts) @ torch.cat(targets).T).clamp(-1, 1).cpu()
