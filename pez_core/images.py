"""Image input: anything image-like becomes a CLIP-ready pixel batch.

Accepted: PIL images, numpy arrays and torch tensors laid out (H, W) or (H, W, C)
with C in 1..4 (ComfyUI's IMAGE is (B, H, W, C) float 0..1). Greyscale is
repeated to RGB, alpha is dropped (as ``PIL.Image.convert("RGB")`` does), and the
image is resized and centre-cropped exactly like open_clip's preprocessing.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import PezError


def to_rgb_tensor(image) -> torch.Tensor:
    """One image → float tensor (3, H, W) in 0..1."""
    if hasattr(image, "getbands"):  # PIL
        image = np.asarray(image.convert("RGBA") if "A" in image.getbands() else image.convert("RGB"))
    if isinstance(image, np.ndarray):
        scale = 255.0 if image.dtype == np.uint8 else 1.0
        image = torch.from_numpy(np.array(image, copy=True)).float() / scale
    if not isinstance(image, torch.Tensor):
        raise PezError(f"expected a PIL image, numpy array or torch tensor, got {type(image).__name__}")
    image = image.detach().float()
    if image.ndim == 2:
        image = image[..., None]
    if image.ndim != 3 or image.shape[-1] not in (1, 2, 3, 4):
        raise PezError(f"an image must be (H, W) or (H, W, C) with C in 1..4, got shape {tuple(image.shape)}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise PezError(f"an image has no pixels (shape {tuple(image.shape)})")
    if not torch.isfinite(image).all():
        raise PezError("an image contains NaN or infinite values; check the node or code that produced it")
    channels = image.shape[-1]
    rgb = image[..., :1].expand(-1, -1, 3) if channels <= 2 else image[..., :3]
    return rgb.clamp(0, 1).permute(2, 0, 1).contiguous()


def split_batch(images) -> list:
    """Expand a (B, H, W, C) tensor/array into a list; pass lists through."""
    if isinstance(images, (torch.Tensor, np.ndarray)) and images.ndim == 4:
        return list(images)
    if isinstance(images, (list, tuple)):
        out = []
        for item in images:
            out.extend(split_batch(item))
        return out
    return [images]


def preprocess(images: Iterable, size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Resize the shortest side to ``size`` (bicubic, antialiased), centre-crop, normalise."""
    images = split_batch(images)
    if not images:
        raise PezError("no images were given")
    out = []
    for image in images:
        x = to_rgb_tensor(image)[None]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(x[..., top:top + size, left:left + size].clamp(0, 1))
    pixels = torch.cat(out)
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t
