"""The shapes world and the bundled shapes-demo CLIP trained on it."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"

import numpy as np
import pytest
import torch

from pez_core.demo import shapes

HELD_OUT_SEED = 987_654  # training uses seeds [0, step]; evaluation in training uses 12345


def test_same_seed_same_pixels():
    a, sa = shapes.sample(3, 20, n_objects=None)
    b, sb = shapes.sample(3, 20, n_objects=None)
    assert sa == sb
    assert all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, b))
    c, _ = shapes.sample(4, 20, n_objects=None)
    assert not all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(a, c))
    assert a[0].size == (64, 64) and a[0].mode == "RGB"


def test_colour_never_background_and_objects_visible():
    images, scenes = shapes.sample(5, 300, n_objects=None)
    assert {len(s.objects) for s in scenes} == {1, 2}
    for img, s in zip(images, scenes):
        assert all(o.color != s.background for o in s.objects)
        x = np.asarray(img).astype(int)
        assert (np.abs(x - shapes.RGB[s.background]).sum(-1) > 60).sum() > 20  # something drawn


def test_every_word_is_one_bpe_token():
    from open_clip.tokenizer import SimpleTokenizer

    tok = SimpleTokenizer()
    for w in shapes.WORDS:
        assert len(tok.encode(w)) == 1, w
    _, scenes = shapes.sample(6, 50, n_objects=2)
    for s in scenes:
        for t in shapes.TEMPLATES:
            words = shapes.caption(s, t).split()
            assert len(tok.encode(" ".join(words))) == len(words), (t, words)


@torch.no_grad()
def test_bundled_model_zero_shot_colour_and_shape():
    """Through pez_core's own loading and preprocessing path, as the nodes and the CLI use it."""
    import pez_core

    if "shapes-demo" not in pez_core.bundled_models():
        pytest.fail("the bundled shapes-demo weights are missing from pez_core/demo/bundled")
    model = pez_core.load_model("shapes-demo", device="cpu")
    images, scenes = shapes.sample(HELD_OUT_SEED, 300, n_objects=1)
    img = model.encode_images(images)
    for classes, template, attr in ((shapes.COLORS, "a {} object", "color"), (shapes.SHAPES, "a photo of a {}", "shape")):
        txt = model.encode_texts([template.format(c) for c in classes])
        pred = (img @ txt.T).argmax(1).tolist()
        acc = np.mean([classes[p] == getattr(s.objects[0], attr) for p, s in zip(pred, scenes)])
        assert acc >= 0.95, f"zero-shot {attr} accuracy {acc:.3f}"


@torch.no_grad()
def test_bundled_model_rows_are_distinct():
    """Every token has its own embedding, so random starts differ (an earlier demo tied 49,374 rows to one)."""
    import pez_core

    emb = pez_core.load_model("shapes-demo", device="cpu").token_embeddings.float()
    assert len(torch.unique(emb, dim=0)) == emb.shape[0] == 49_408


def test_bundled_model_seeds_give_different_prompts():
    """Different seeds start from different tokens and may end elsewhere; the prompt still names the object.
    Measured (a small red circle, L=8, 150 steps): 3 different prompts of 3, all naming red and circle. Without
    the fluency prior: its fluent draft may win from every start, and this is about the starts."""
    import pez_core
    from pez_core import PezConfig

    model = pez_core.load_model("shapes-demo", device="cpu", precision="fp32")
    images, scenes = shapes.sample(HELD_OUT_SEED, 1, n_objects=1)
    prompts = [pez_core.invert(model, images, PezConfig(prompt_len=8, steps=150, seed=s, fluency=0))[0].prompt for s in (0, 1, 11)]
    assert len(set(prompts)) >= 2, prompts
    o = scenes[0].objects[0]
    assert sum(o.color in p.split() and o.shape in p.split() for p in prompts) >= 2, (o, prompts)
