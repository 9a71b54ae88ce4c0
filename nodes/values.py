"""Input values as pez_core takes them: list inputs, IMAGE batches and texts, checked and named."""
from __future__ import annotations

from typing import Any

import torch

from .. import pez_core


def first(value: Any, default: Any = None) -> Any:
    """The first item of a list input (or the value itself); ``default`` when absent or empty."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def images_of(value: Any, name: str = "images") -> list[torch.Tensor]:
    """IMAGE input(s) — a (B, H, W, C) batch, or a list of batches of different sizes — as a list of
    (H, W, C) tensors, cloned outside inference mode (ComfyUI hands nodes inference tensors); errors name
    the input ``name``. Call inside ``torch.inference_mode(False)``."""
    if value is None:
        return []
    batches = value if isinstance(value, list) else [value]
    images: list[torch.Tensor] = []
    for batch in batches:
        if batch is None:
            continue
        if not isinstance(batch, torch.Tensor):
            raise pez_core.PezError(f"{name}: expected an IMAGE, got {type(batch).__name__}")
        images.extend([batch.clone()] if batch.ndim == 3 else list(batch.clone()))
    for i, image in enumerate(images):
        if image.is_floating_point() and not torch.isfinite(image).all():
            which = f"image {i + 1} of {len(images)}" if len(images) > 1 else "the image"
            raise pez_core.PezError(f"{name}: {which} contains NaN or infinite values; check the node that made it")
    return images


def texts_of(value: Any, name: str = "text") -> list[str]:
    """Non-blank strings of a STRING input that may be a list; bounded, and refused (naming ``name``) when
    CLIP would read nothing in them."""
    values = value if isinstance(value, list) else [value]
    texts = [pez_core.check_text(v, name) for v in values if isinstance(v, str) and v.strip()]
    for text in texts:
        require_tokens(text, name)
    return texts


def require_tokens(text: str, name: str) -> str:
    """``text``, or an error naming the input when CLIP reads no token in it (e.g. only control characters)."""
    if not pez_core.clip_tokenizer().encode(text, name):
        raise pez_core.PezError(f"{name} is empty to CLIP (only whitespace or characters it drops); give it some words")
    return text
