"""Images (pez_core.clip.images): odd sizes and modes, strips, 16- and 32-bit pixels, as they reach the
image tower (the CLI's image files too)."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import pez_core
from helpers import write_tiny_checkpoint


@pytest.mark.parametrize("image", [
    np.zeros((1, 1, 3)),                                  # 1x1
    np.full((30, 20), 0.5),                               # greyscale
    np.random.default_rng(0).random((16, 16, 4)),         # RGBA
    np.random.default_rng(0).integers(0, 255, (7680 // 8, 4320 // 8, 3), dtype=np.uint8),
])
def test_odd_images_are_converted(model, image):
    assert pez_core.score(model, "a photo", [image]).shape == (1, 1)


def test_8k_image(model):
    from PIL import Image
    feats = model.encode_images([Image.new("RGB", (7680, 4320), (200, 10, 10))])
    assert feats.shape == (1, 32) and torch.isfinite(feats).all()


def _resize_then_crop(image, size: int) -> torch.Tensor:
    """The preprocessing as it was: the whole image resized, then cropped (what strips must still give)."""
    from pez_core.clip.images import to_rgb_tensor

    x = to_rgb_tensor(image)[None]
    h, w = x.shape[-2:]
    scale = size / min(h, w)
    new_h, new_w = max(size, round(h * scale)), max(size, round(w * scale))
    x = torch.nn.functional.interpolate(x, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    top, left = (new_h - size) // 2, (new_w - size) // 2
    return x[..., top:top + size, left:left + size].clamp(0, 1)


def _pixels(image, size: int = 224) -> torch.Tensor:
    from pez_core.clip.images import preprocess

    return preprocess([image], size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))


def test_a_strip_is_never_resized_whole(monkeypatch):
    from PIL import Image

    largest = []
    interpolate = torch.nn.functional.interpolate

    def measured(x, *args, **kwargs):
        out = interpolate(x, *args, **kwargs)
        largest.append(out[0, 0].numel())
        return out
    monkeypatch.setattr(torch.nn.functional, "interpolate", measured)
    strips = [torch.rand(1, 1, 8192, 3), torch.rand(1, 16384, 1, 3), Image.new("RGB", (8192, 1), (200, 30, 30)),
              torch.rand(1, 2, 16384, 3), torch.rand(1, 5000, 300, 3)]  # ComfyUI's EmptyImage allows 16384
    for strip in strips:
        pixels = _pixels(strip)
        assert pixels.shape == (1, 3, 224, 224) and torch.isfinite(pixels).all()
    assert max(largest) <= 8 * 224 * 224  # resized whole, 8192x1 was 224 x 1,835,008 pixels


@pytest.mark.parametrize(("shape", "size"), [((12, 600), 224), ((600, 12), 224), ((1, 900), 224), ((40, 1000), 224),
                                             ((300, 6000), 32), ((6001, 301), 32), ((5, 37), 32)])
def test_a_strip_gives_the_pixels_resizing_it_whole_gave(shape, size):
    image = torch.rand(*shape, 3, generator=torch.Generator().manual_seed(sum(shape)))
    assert (_pixels(image, size) - _resize_then_crop(image, size)).abs().max() < 1e-4


@pytest.mark.parametrize("shape", [(64, 64), (48, 80), (270, 480), (100, 400), (400, 100), (1080, 1920), (7, 5)])
def test_usual_images_are_preprocessed_exactly_as_before(shape):
    image = torch.rand(*shape, 3, generator=torch.Generator().manual_seed(sum(shape)))
    assert torch.equal(_pixels(image), _resize_then_crop(image, 224))


def _gradient16():
    import numpy as np

    y, x = np.mgrid[0:48, 0:64]
    return ((x * 1000 + y * 300) % 65536).astype(np.uint16)  # every value from dark to bright


def test_a_16_bit_png_is_scaled_not_clipped(tmp_path):
    import numpy as np
    from PIL import Image

    from pez_core.clip.images import to_rgb_tensor

    deep = _gradient16()
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray((deep >> 8).astype(np.uint8)).save(tmp_path / "flat.png")
    with Image.open(tmp_path / "deep.png") as opened:
        assert opened.mode == "I;16"  # what PIL makes of a 16-bit greyscale PNG
        pixels = to_rgb_tensor(opened)
    eight_bit = to_rgb_tensor(Image.open(tmp_path / "flat.png"))
    assert (pixels - eight_bit).abs().max() <= 1 / 255 + 1e-6 and pixels.min() < 0.01
    assert (to_rgb_tensor(deep) - eight_bit).abs().max() <= 1 / 255 + 1e-6  # a uint16 array too
    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    deep_feature, flat_feature = model.encode_images([Image.open(tmp_path / "deep.png"),
                                                      Image.open(tmp_path / "flat.png")])
    assert float(deep_feature @ flat_feature) > 0.999


@pytest.mark.parametrize(("mode", "values"), [("I", lambda d: d.astype("int32")),
                                                ("F", lambda d: d.astype("float32") / 65535)])
def test_32_bit_pil_modes_are_scaled(mode, values):
    from PIL import Image

    from pez_core.clip.images import to_rgb_tensor

    deep = _gradient16()
    image = Image.fromarray(values(deep))
    assert image.mode == mode
    expected = torch.from_numpy(deep.astype("float32") / 65535)
    assert (to_rgb_tensor(image)[0] - expected).abs().max() < 1e-5


def test_the_cli_scores_a_16_bit_png_like_its_8_bit_twin(tmp_path, capsys):
    import numpy as np
    from PIL import Image

    from pez_core.cli import main

    deep = _gradient16()
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray((deep >> 8).astype(np.uint8)).save(tmp_path / "flat.png")
    checkpoint = write_tiny_checkpoint(tmp_path)
    assert main(["score", "--model", str(checkpoint), "--text", "a grey gradient", "--json",
                 str(tmp_path / "deep.png"), str(tmp_path / "flat.png")]) == 0
    deep_score, flat_score = (json.loads(line)["similarity"] for line in capsys.readouterr().out.splitlines())
    assert deep_score == pytest.approx(flat_score, abs=2e-3)
