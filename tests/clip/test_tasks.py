"""The CLIP tasks (pez_core.clip.tasks): invert, style and distill, their negatives and input checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import pez_core
from pez_core import PezConfig, PezError
from helpers import write_tiny_checkpoint


def test_negative_target_lowers_similarity(model):
    rng = np.random.default_rng(3)
    image, negative = rng.random((32, 32, 3)), rng.random((32, 32, 3))
    config = PezConfig(prompt_len=6, steps=80, seed=0)
    plain = pez_core.invert(model, [image], config)[0]
    pushed = pez_core.invert(model, [image], config, negative_images=[negative], negative_weight=2.0)[0]
    to_negative = pez_core.score(model, [plain.prompt, pushed.prompt], [negative])[:, 0]
    assert to_negative[1] < to_negative[0]


def test_invert_batch_one_prompt_per_image_and_style(model):
    rng = np.random.default_rng(4)
    batch = torch.from_numpy(rng.random((3, 40, 24, 3))).float()  # ComfyUI layout (B, H, W, C)
    results = pez_core.invert(model, batch, PezConfig(prompt_len=4, steps=10))
    assert len(results) == 3
    # each prompt is scored against its own image (not the batch's first, nor the mean)
    own = [float(pez_core.score(model, r.prompt, [image])[0, 0]) for r, image in zip(results, batch)]
    assert [r.similarity for r in results] == pytest.approx(own, abs=1e-5)
    shared = pez_core.style(model, list(batch), PezConfig(prompt_len=4, steps=10))
    assert shared.similarity == pytest.approx(float(pez_core.score(model, shared.prompt, batch).mean()), abs=1e-5)


@pytest.mark.parametrize("threads", [1, 2])
def test_a_batch_invariant_prompt_does_not_depend_on_the_images_beside_it(model, threads):
    """Its start comes from its own pixels, and every model call has one shape, so its last float bits (and
    with them every argmax of the search) are the same in any batch, order or split."""
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        images = list(torch.from_numpy(np.random.default_rng(8).random((9, 24, 24, 3))).float())
        config = PezConfig(prompt_len=4, steps=15, restarts=2, batch_invariant=True)
        together = [r.prompt for r in pez_core.invert(model, images, config)]
        split = [r.prompt for part in (images[:1], images[1:8], images[8:])
                 for r in pez_core.invert(model, part, config)]
        backwards = [r.prompt for r in pez_core.invert(model, images[::-1], config)][::-1]
    finally:
        torch.set_num_threads(before)
    assert split == together and backwards == together
    assert len(set(together)) > 1  # the images got starts of their own


@pytest.mark.parametrize("call, message", [
    (lambda m: pez_core.invert(m, []), "no images"),
    (lambda m: pez_core.invert(m, [np.full((8, 8, 3), np.nan)]), "NaN"),
    (lambda m: pez_core.invert(m, [np.full((8, 8, 3), np.inf)]), "NaN or infinite"),
    (lambda m: pez_core.distill(m, "   "), "empty"),
    (lambda m: pez_core.distill(m, ""), "empty"),
    (lambda m: pez_core.distill(m, "a cat", PezConfig(prompt_len=0)), "prompt length"),
    (lambda m: pez_core.distill(m, "a cat", PezConfig(prompt_len=76)), "prompt length"),
    (lambda m: pez_core.distill(m, "a cat", PezConfig(steps=0)), "steps"),
    (lambda m: pez_core.distill(m, "a cat", PezConfig(vocab="klingon")), "unknown vocabulary mode"),
    (lambda m: pez_core.distill(m, "a cat", PezConfig(allowlist="cat", blocklist="cat")), "blocklist bans every"),
    (lambda m: pez_core.distill(m, "a cat", ratio=0), "ratio"),
    (lambda m: pez_core.invert(m, [np.zeros((8, 8, 3))], negative_weight=-1), "negative_weight"),
])
def test_bad_input_is_a_clear_error(model, call, message):
    with pytest.raises(PezError, match=message):
        call(model)


def test_distill_ratio_sets_length(model):
    text = "a large red circle on the left of a gray background"   # 11 CLIP tokens
    bank = "red, green, circle, square, large, small, left, gray"  # whole words: ids survive decoding
    assert len(model.tokenize(text)) == 11
    for ratio, length in ((0.5, 6), (0.1, 1), (1.0, 11)):
        result = pez_core.distill(model, text, PezConfig(steps=4, allowlist=bank), ratio=ratio)
        assert len(result.token_ids) == length, (ratio, result.prompt)
    assert pez_core.clip.tasks.distill_length(model, "red " * 200, 0.7) == 75  # never past CLIP's limit


@pytest.mark.parametrize("weight", [float("inf"), float("-inf"), float("nan"), -0.5, "0.5", True])
def test_a_negative_weight_that_is_no_finite_number_is_refused(tmp_path, weight):
    import numpy as np

    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    image = np.random.default_rng(0).random((32, 32, 3))
    for task in (pez_core.invert, pez_core.style):
        with pytest.raises(PezError, match=r"negative_weight must be a finite number >= 0 .* got "):
            task(model, [image], PezConfig(steps=2), negative_images=[image], negative_weight=weight)


def test_many_negatives_weigh_as_much_as_one(tmp_path):
    """The negative term is the weight times the MEAN similarity to the negatives: 256 negatives at 0.5 push
    no harder than one (summed, they had swamped the image: its similarity fell from 0.39 to -0.64)."""
    import numpy as np

    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    rng = np.random.default_rng(0)
    image, negatives = rng.random((32, 32, 3)), [rng.random((32, 32, 3)) for _ in range(256)]
    config = PezConfig(prompt_len=4, steps=60, seed=0, polish="off")
    one, many = (pez_core.invert(model, [image], config, negative_images=negatives[:n], negative_weight=0.5)[0]
                 for n in (1, 256))
    assert many.similarity == pytest.approx(one.similarity, abs=0.05)
    styled = pez_core.style(model, [image], config, negative_images=negatives, negative_weight=0.5)
    assert styled.similarity == pytest.approx(one.similarity, abs=0.05)
