"""Image input: anything image-like becomes a CLIP-ready pixel batch.

Accepted: PIL images, numpy arrays and torch tensors laid out (H, W) or (H, W, C)
with C in 1..4 (ComfyUI's IMAGE is (B, H, W, C) float 0..1). Greyscale is
repeated to RGB, alpha is dropped (as ``PIL.Image.convert("RGB")`` does), 16-bit
pixels are scaled to 0..1 (not clipped), and the image is resized and centre-cropped
exactly like open_clip's preprocessing.
"""
from __future__ import annotations

import logging
from typing import Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from ..common.errors import PezError

log = logging.getLogger(__name__)

# past this many times the crop along its long side, a strip is resized only where the crop reads it:
# resized whole, an 8192x1 strip would be 224 x 1.8 million pixels (GBs); usual photos stay below it
MAX_ASPECT = 4
FULL_SCALE = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}  # integer pixels -> 0..1


def _pil_pixels(image) -> np.ndarray:
    """A PIL image as an array. 16- and 32-bit modes are scaled to 0..1 here: PIL's ``convert("RGB")``
    clips them at 255, which turns a 16-bit PNG white."""
    if image.mode.startswith("I;16"):
        return np.asarray(image).astype(np.float32) / 65535.0
    if image.mode in ("I", "F"):  # 32-bit int or float: full scale from the values (older PIL gives 16-bit PNGs as I)
        pixels = np.asarray(image).astype(np.float64)
        top = float(pixels.max(initial=0.0))
        full = next((f for f in ((1.0,) if image.mode == "F" else ()) + (255.0, 65535.0) if top <= f), top)
        log.debug("a %s-mode image (max %g) scaled by 1/%g", image.mode, top, full)
        return (pixels / full).astype(np.float32)
    return np.asarray(image.convert("RGBA") if "A" in image.getbands() else image.convert("RGB"))


def to_rgb_tensor(image) -> torch.Tensor:
    """One image → float tensor (3, H, W) in 0..1."""
    if hasattr(image, "getbands"):  # PIL
        image = _pil_pixels(image)
    if isinstance(image, np.ndarray):
        scale = FULL_SCALE.get(image.dtype, 1.0)
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
    """Resize the shortest side to ``size`` (bicubic, antialiased), centre-crop, normalise.

    A strip (resized, over ``MAX_ASPECT`` times the crop long) gets the same pixels, to float rounding,
    without ever holding the whole resized strip (``_strip_centre``)."""
    images = split_batch(images)
    if not images:
        raise PezError("no images were given")
    out = []
    for image in images:
        x = to_rgb_tensor(image)[None]
        h, w = x.shape[-2:]
        scale = size / min(h, w)
        new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
        if max(new_h, new_w) > MAX_ASPECT * size:
            out.append(_strip_centre(x, size, max(new_h, new_w)).clamp(0, 1))
            continue
        x = F.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
        top, left = (new_h - size) // 2, (new_w - size) // 2
        out.append(x[..., top:top + size, left:left + size].clamp(0, 1))
    pixels = torch.cat(out)
    mean_t = torch.tensor(mean, dtype=pixels.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, dtype=pixels.dtype).view(1, 3, 1, 1)
    return (pixels - mean_t) / std_t


def _strip_centre(x: torch.Tensor, size: int, long_out: int) -> torch.Tensor:
    """The centre ``size`` x ``size`` crop of a strip (1, 3, H, W) resized so that its short side is ``size``
    and its long side ``long_out``, computed from only the source pixels that crop reads."""
    tall = x.shape[-2] > x.shape[-1]
    x = x.transpose(-1, -2) if tall else x  # the long side is the width from here on
    first = (long_out - size) // 2  # where the whole resize's crop starts
    weights, start = _resize_rows(x.shape[-1], long_out, first, size)
    x = x[..., start:start + weights.shape[1]]
    x = F.interpolate(x, size=(size, x.shape[-1]), mode="bicubic", antialias=True, align_corners=False)
    x = x @ weights.T.to(x.dtype)
    return x.transpose(-1, -2) if tall else x


def _resize_rows(n: int, out: int, first: int, count: int) -> tuple[torch.Tensor, int]:
    """Rows ``first`` to ``first + count`` of the matrix of torch's antialiased bicubic resize of ``n``
    pixels to ``out`` (``F.interpolate(..., antialias=True)``, align_corners False), over the source pixels
    they read: (weights (count, m), the first of those m pixels)."""
    scale = n / out
    support, stretch = 2 * max(scale, 1.0), max(scale, 1.0)  # the kernel widens when shrinking
    centre = scale * (torch.arange(first, first + count, dtype=torch.float64) + 0.5)
    low = (centre - support + 0.5).floor().clamp(min=0)
    high = (centre + support + 0.5).floor().clamp(max=n)
    start, stop = int(low[0]), int(high[-1])
    k = torch.arange(start, stop, dtype=torch.float64)
    t = ((k[None] - centre[:, None] + 0.5) / stretch).abs()
    a = -0.5  # Keys' cubic, as torch (and PIL) use
    w = torch.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1,
                    torch.where(t < 2, ((a * t - 5 * a) * t + 8 * a) * t - 4 * a, torch.zeros_like(t)))
    w = w * ((k[None] >= low[:, None]) & (k[None] < high[:, None]))
    return w / w.sum(dim=1, keepdim=True), start
