"""What users ask PEZ for: invert images, find a shared style, distill a text, score prompts.

Each task takes one ``PezModel`` or several (a list, or a ``JointModel`` from ``pez_core.combine``):
with several, one prompt is optimised for all of them at once (``pez_core.clip.joint``) and each result
also reports every model's similarity (``JointResult.similarities``).
"""
from __future__ import annotations

import dataclasses
import importlib.util
import logging
import math
from numbers import Real
from typing import Callable, Sequence

import torch

from ..common.errors import PezError
from ..engine.config import Callback, PezConfig, PezResult
from ..engine.prior import READABLE_FLUENCY, TextPrior
from ..lm.prior import load_prior
from . import joint
from .images import split_batch
from .model import MAX_PROMPT_TOKENS, PezModel
from .objective import Objective, check_template, optimize
from .presets import DEFAULT_FLUENCY_MODEL, FLUENCY_MODEL_OF, READABLE_BY_DEFAULT

log = logging.getLogger(__name__)

Targets = list[list[tuple[torch.Tensor, float]]]  # per problem: (feature, weight) pairs

# how hard the negatives push the prompt away: the gain is the similarity to the positives minus this
# weight times the MEAN similarity to the negatives, so it means the same however many negatives there are
DEFAULT_NEGATIVE_WEIGHT = 0.5


def check_negative_weight(weight) -> float:
    """``weight`` as a float, or an error naming negative_weight (inf or NaN would optimise nothing)."""
    if isinstance(weight, bool) or not isinstance(weight, Real) or not math.isfinite(weight) or weight < 0:
        raise PezError(f"negative_weight must be a finite number >= 0 (how hard the negatives push the prompt "
                       f"away; default {DEFAULT_NEGATIVE_WEIGHT}), got {weight!r}")
    return float(weight)


def _negatives(model: PezModel, images, texts, weight: float) -> list[tuple[torch.Tensor, float]]:
    """(feature, -weight / n) for the n negative images and texts: together they weigh ``weight``."""
    weight = check_negative_weight(weight)
    feats = []
    if images is not None and len(split_batch(images)):
        feats.extend(model.encode_images(images))
    texts = [texts] if isinstance(texts, str) else list(texts or [])
    texts = [t for t in texts if t.strip()]
    if texts:
        feats.extend(model.encode_texts(texts, "negative text"))
    return [(f, -weight / len(feats)) for f in feats]


def _image_features(model: PezModel, images, one_by_one: bool = False) -> torch.Tensor:
    """Unit features (N, D); ``one_by_one``: each image through the tower alone, so that its feature's last
    bits never depend on the images beside it (a batch-invariant run)."""
    images = split_batch(images)
    if not images:
        raise PezError("no images were given; connect at least one image")
    if one_by_one:
        return torch.cat([model.encode_images([image]) for image in images])
    return model.encode_images(images)


def fluency_prior(model: joint.AnyModel, config: PezConfig) -> tuple[PezConfig, TextPrior | None]:
    """``config`` with its fluency weight decided (None: ``READABLE_FLUENCY`` for the models in
    ``READABLE_BY_DEFAULT``, else 0), and the language prior it reads prompts with: ``config.fluency_model``,
    else the model's own (the caption LM for the demo model, GPT-2 for real CLIPs); None at weight 0."""
    first = model if isinstance(model, PezModel) else joint.joint_members(model)[0][0]
    if config.fluency is None:
        readable = first.name in READABLE_BY_DEFAULT or config.fluency_model is not None
        if readable and importlib.util.find_spec("transformers") is None:
            log.warning("readable prompts need the language-model extra (pip install \"pez-hard-prompts[lm]\"); "
                        "learning without the fluency prior")
            readable = False
        config = dataclasses.replace(config, fluency=READABLE_FLUENCY if readable else 0.0)
    if not config.fluency:
        return config, None
    name = config.fluency_model or FLUENCY_MODEL_OF.get(first.name, DEFAULT_FLUENCY_MODEL)
    return config, load_prior(name, str(first.device))


def _optimize(model: joint.AnyModel, targets_of: Callable[[PezModel], Targets], config: PezConfig | None,
              callback: Callback | None) -> list[PezResult]:
    """Targets as each model encodes them (its own image or text tower), then one search over all models."""
    config = config or PezConfig()
    config.validate()
    check_template(model if isinstance(model, PezModel) else joint.joint_members(model)[0][0], config)  # before any work
    config, prior = fluency_prior(model, config)
    if isinstance(model, PezModel):  # one model: exactly the single-model search
        return optimize(model, Objective.stack(targets_of(model)), config, callback, prior)
    models = model if isinstance(model, joint.JointModel) else joint.combine(model)
    objectives = [Objective.stack(targets_of(m)) for m in models.models]
    return joint.optimize(models, objectives, config, callback, prior)


def invert(model: joint.AnyModel, images, config: PezConfig | None = None, *, negative_images=None,
           negative_texts: str | Sequence[str] | None = None, negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
           callback: Callback | None = None) -> list[PezResult]:
    """One prompt per image; all images are optimised together in one batch. With
    ``config.batch_invariant`` an image's prompt depends only on its pixels, the settings, the model and the
    seed, not on the images beside it.

    Negative images and texts push every prompt away: the gain is the cosine to its image minus
    ``negative_weight`` times the mean cosine to the negatives (the weight means the same for any number)."""
    check_negative_weight(negative_weight)
    one_by_one = config is not None and config.batch_invariant

    def targets(m: PezModel) -> Targets:
        feats = _image_features(m, images, one_by_one)
        negatives = _negatives(m, negative_images, negative_texts, negative_weight)
        return [[(feat, 1.0), *negatives] for feat in feats]
    return _optimize(model, targets, config, callback)


def style(model: joint.AnyModel, images, config: PezConfig | None = None, *, negative_images=None,
          negative_texts: str | Sequence[str] | None = None, negative_weight: float = DEFAULT_NEGATIVE_WEIGHT,
          callback: Callback | None = None) -> PezResult:
    """One prompt for all images jointly: what they share (their style, their subject).

    The gain is the mean cosine to the images minus ``negative_weight`` times the mean cosine to the
    negative images and texts."""
    check_negative_weight(negative_weight)

    def targets(m: PezModel) -> Targets:
        feats = _image_features(m, images)
        negatives = _negatives(m, negative_images, negative_texts, negative_weight)
        return [[(feat, 1.0 / len(feats)) for feat in feats] + negatives]
    return _optimize(model, targets, config, callback)[0]


def distill_length(model: PezModel, text: str, ratio: float) -> int:
    """Prompt length for a share ``ratio`` of the text's token count (at least 1, at most 75)."""
    if not 0 < ratio <= 1:
        raise PezError(f"ratio must be in (0, 1], got {ratio}")
    return max(1, min(MAX_PROMPT_TOKENS, round(ratio * len(model.tokenize(text)))))


def distill(model: joint.AnyModel, text: str, config: PezConfig | None = None, *, ratio: float | None = None,
            callback: Callback | None = None) -> PezResult:
    """A shorter prompt with the meaning of ``text`` (texts over 75 tokens are chunked, not cut)."""
    if not isinstance(text, str) or not text.strip():
        raise PezError("the prompt to distill is empty; give it some words")
    config = config or PezConfig()
    if ratio is not None:
        config = dataclasses.replace(config, prompt_len=distill_length(joint.joint_members(model)[0][0], text, ratio))
    return _optimize(model, lambda m: [[(m.encode_texts([text])[0], 1.0)]], config, callback)[0]


def score(model: joint.AnyModel, texts: str | Sequence[str], images=None,
          other_texts: str | Sequence[str] | None = None) -> torch.Tensor:
    """Cosine similarity (n_texts, n_targets) of texts to images and/or other texts, in [-1, 1].
    Several models: the weighted mean of their similarities (``score_each`` gives each model's)."""
    if not isinstance(model, PezModel):
        each = score_each(model, texts, images, other_texts)
        return sum(w * sims for (_, w), sims in zip(joint.joint_members(model), each))
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


def score_each(model: joint.AnyModel, texts: str | Sequence[str], images=None,
               other_texts: str | Sequence[str] | None = None) -> list[torch.Tensor]:
    """``score`` under each model a (joint) model stands for, in model order."""
    return [score(m, texts, images, other_texts) for m, _ in joint.joint_members(model)]
