"""The frozen CLIP and its encoders (pez_core.clip.model): exact cuts at end of text, shared starts, towers
without a projection, long texts, empty texts, cancel while encoding images; the real ViT-B-32 architecture."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import pez_core
from pez_core import PezConfig, PezError, PezModel
from pez_core.clip import model as clip_model
from pez_core.demo import BUNDLED_DIR
from helpers import TINY_CONFIG, Cancelled, encode_text_reference, planted_problem


def test_cut_at_eot_equals_encode_text(model):
    ids = torch.randint(1, 49406, (4, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.encode_ids(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5


@pytest.mark.parametrize("text_batch", [2, 5])
@pytest.mark.parametrize("layer_scale", [None, 0.5])
def test_candidates_sharing_a_start_encode_as_each_alone(model, monkeypatch, text_batch, layer_scale):
    """Rows that share leading tokens with the consensus run only their tails through the tower; every row
    must still get exactly its own feature, across batches whose shared starts differ (batches of 2 include
    the consensus itself, whose tail is end-of-text alone), with and without layer scale."""
    from open_clip.model import CLIP
    from pez_core.clip import model as models
    if layer_scale is not None:
        config = copy.deepcopy(TINY_CONFIG)
        config["text_cfg"]["ls_init_value"] = layer_scale
        torch.manual_seed(0)
        model = models.PezModel(CLIP(**config), "tiny with layer scale", torch.device("cpu"), torch.float32)
    assert model._tails_supported  # open_clip's plain blocks: the shared-start path is the one under test
    gen = torch.Generator().manual_seed(3)
    base = torch.randint(1, 49406, (6,), generator=gen)
    rows = [base.clone()]
    for position in range(6):  # candidates as polishing makes them: one token changed
        for _ in range(2):
            row = base.clone()
            row[position] = int(torch.randint(1, 49406, (), generator=gen))
            rows.append(row)
    rows += [torch.randint(1, 49406, (6,), generator=gen) for _ in range(3)] + [base.clone()]
    ids = torch.stack(rows)
    monkeypatch.setattr(models, "TEXT_BATCH", text_batch)  # several batches, each with its own shared start
    with torch.no_grad():
        assert (model._encode_same_length(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5


def test_a_tower_without_text_projection_encodes():
    """open_clip's ``proj_type="none"`` leaves no text projection: the feature is the normed end-of-text state."""
    from open_clip.model import CLIP
    config = copy.deepcopy(TINY_CONFIG)
    config["text_cfg"]["proj_type"] = "none"
    torch.manual_seed(0)
    model = pez_core.PezModel(CLIP(**config), "tiny without projection", torch.device("cpu"), torch.float32)
    assert model.clip.text_projection is None
    ids = torch.randint(1, 49406, (3, 5), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert (model.encode_ids(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5
        assert (model._encode_same_length(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5


def test_encode_texts_matches_open_clip_tokenizer(model):
    import open_clip
    tokens = open_clip.tokenize(["a red circle on a white background"])
    with torch.no_grad():
        reference = torch.nn.functional.normalize(model.clip.encode_text(tokens), dim=-1)
        assert (model.encode_texts(["a red circle on a white background"]) - reference).abs().max() < 1e-5


def test_long_text_is_chunked_not_truncated(model):
    head = "a red circle on a white background " * 12   # 84 tokens: over CLIP's 75
    tail_a, tail_b = head + "with a dog", head + "with a spaceship"
    assert len(model.tokenize(tail_a)) > 75
    with torch.no_grad():
        a, b = model.encode_texts([tail_a, tail_b])
        chunks = model.encode_texts([" ".join(model.decode(model.tokenize(tail_a)[:75]).split()),
                                     model.decode(model.tokenize(tail_a)[75:])])
    assert not torch.allclose(a, b)   # the words past 75 tokens count
    assert torch.allclose(a, torch.nn.functional.normalize(chunks.mean(0), dim=0), atol=1e-5)


def test_empty_texts_are_named():
    model = pez_core.load_model("shapes-demo", device="cpu")
    with pytest.raises(PezError, match="^negative text 2 is empty"):
        model.encode_texts(["a cat", "\x00\x01"], "negative text")


def test_vit_b32_random_weights_cut_and_recovery():
    """The real ViT-B-32 text tower (random weights): exact cut at EOT, and PEZ beats random search."""
    model = pez_core.load_model("ViT-B-32", "none", device="cpu")
    ids = torch.randint(1, 49406, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.encode_ids(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5
    objective, random_best = planted_problem(model, length=8, seed=2)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=60, seed=0))[0]
    assert result.similarity > random_best, (result.similarity, random_best)


def tiny_model(vision: str) -> PezModel:
    """A fresh random tiny CLIP (not cached) with a 3-block ViT or the demo's 4-bottleneck ResNet."""
    from open_clip.model import CLIP

    config = (json.loads((BUNDLED_DIR / "shapes-demo.json").read_text()) if vision == "resnet" else
              {**TINY_CONFIG, "vision_cfg": {**TINY_CONFIG["vision_cfg"], "layers": 3}})
    torch.manual_seed(0)
    return PezModel(CLIP(**config), vision, torch.device("cpu"), torch.float32)


@pytest.mark.parametrize("vision", ["vit", "resnet"])
@pytest.mark.parametrize("between_chunks", [True, False])
def test_cancel_while_encoding_images_stops_within_one_small_chunk(interrupt, vision, between_chunks):
    model = tiny_model(vision)
    blocks = clip_model._blocks(model.clip.visual)
    ran, chunks = [], []  # blocks run, and the size of every chunk encoded whole
    for block in blocks:
        block.register_forward_hook(lambda *_: ran.append(1))
    model.clip.visual.register_forward_hook(lambda module, args, out: chunks.append(len(out)))
    cancel_after = len(blocks) if between_chunks else 1  # Cancel pressed after the first chunk, or in its forward

    def check():
        if len(ran) >= cancel_after:
            raise Cancelled
    interrupt(check)
    images = torch.rand(100, 40, 40, 3)
    with pytest.raises(Cancelled):
        model.encode_images(images)
    assert len(ran) == cancel_after  # not one block more
    assert chunks == ([clip_model.CPU_IMAGE_BATCH] if between_chunks else []) and clip_model.CPU_IMAGE_BATCH <= 8
    calls = []
    interrupt(lambda: calls.append(1))
    assert model.encode_images(images).shape == (100, model.clip.visual.output_dim)
    chunk_count = -(-100 // clip_model.CPU_IMAGE_BATCH)
    assert len(calls) == chunk_count * (1 + len(blocks))  # before every chunk and block, and nowhere else
    interrupt(None)
    model.encode_images(images[:2])
    assert len(calls) == chunk_count * (1 + len(blocks))  # the checks left with the call
