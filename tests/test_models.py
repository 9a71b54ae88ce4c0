"""Model loading: names, checkpoints, offline behaviour, damaged files — and one real ViT-B-32."""
from __future__ import annotations

import json

import pytest
import torch

import pez_core
from pez_core import ModelLoadError, PezConfig, PezError, PezModel, WeightsNotAvailableError
from pez_core.clip import model as clip_model
from pez_core.common import limits
from pez_core.demo import BUNDLED_DIR
from helpers import TINY_CONFIG, encode_text_reference, planted_problem, write_tiny_checkpoint


def test_checkpoint_with_config_loads_and_is_cached(tmp_path):
    path = write_tiny_checkpoint(tmp_path)
    first = pez_core.load_model(str(path), device="cpu")
    assert pez_core.load_model(str(path), device="cpu") is first
    assert first.image_size == 32 and first.token_embeddings.shape == (49408, 16)


def test_unknown_model_lists_known_names():
    with pytest.raises(PezError, match="unknown model 'ViT-Q-99'.*ViT-L-14 · openai"):
        pez_core.load_model("ViT-Q-99", device="cpu")


def test_unknown_tag_lists_tags():
    with pytest.raises(PezError, match="known tags:.*laion2b_s34b_b79k"):
        pez_core.load_model("ViT-B-32", "no_such_tag", device="cpu")


def test_offline_missing_weights_names_file_and_folder(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError) as error:
        pez_core.load_model("ViT-H-14 · laion2b_s32b_b79k", device="cpu")
    message = str(error.value)
    assert "laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in message and "open_clip_model.safetensors" in message
    assert "models/pez" in message and "HF_HUB_OFFLINE" in message


def test_damaged_checkpoint_is_reported(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "damaged")
    path.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="damaged"):
        pez_core.load_model(str(path), device="cpu")


def test_checkpoint_of_another_model_is_reported(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "ViT-B-32-mine")
    path.with_suffix(".json").unlink()  # architecture now inferred from the name: ViT-B-32
    with pytest.raises(ModelLoadError, match="does not fit ViT-B-32"):
        pez_core.load_model(str(path), device="cpu")


def test_checkpoint_without_architecture_is_reported(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "mystery")
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError, match="cannot tell the architecture"):
        pez_core.load_model(str(path), device="cpu")


def test_missing_checkpoint_path(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        pez_core.load_model(str(tmp_path / "nothing.safetensors"), device="cpu")


def test_bad_precision_and_device():
    with pytest.raises(PezError, match="unknown precision"):
        pez_core.load_model("ViT-B-32", "none", device="cpu", precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(PezError, match="no CUDA GPU"):
            pez_core.load_model("ViT-B-32", "none", device="cuda")


def test_vit_b32_random_weights_cut_and_recovery():
    """The real ViT-B-32 text tower (random weights): exact cut at EOT, and PEZ beats random search."""
    model = pez_core.load_model("ViT-B-32", "none", device="cpu")
    ids = torch.randint(1, 49406, (2, 16), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert (model.encode_ids(ids) - encode_text_reference(model, ids)).abs().max() < 1e-5
    objective, random_best = planted_problem(model, length=8, seed=2)
    result = pez_core.optimize(model, objective, PezConfig(prompt_len=8, steps=60, seed=0))[0]
    assert result.similarity > random_best, (result.similarity, random_best)


# --- Cancel ---------------------------------------------------------------------------------------------
class Cancelled(Exception):
    pass


@pytest.fixture
def interrupt():
    """``interrupt(check)`` installs the cancel hook (as ComfyUI does) for one test."""
    yield limits.set_interrupt_check
    limits.set_interrupt_check(None)
    pez_core.clear_cache()


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


def test_cancel_while_loading_a_model_is_seen_between_its_steps(tmp_path, interrupt):
    path = write_tiny_checkpoint(tmp_path)
    pez_core.load_model(str(path), device="cpu")  # first loads build shared things (the tokenizer)
    pez_core.clear_cache()
    calls = []
    interrupt(lambda: calls.append(1))
    pez_core.load_model(str(path), device="cpu")
    assert len(calls) >= 4  # before building, reading the weights, loading them and making the PezModel
    for cancel_at in range(len(calls)):
        pez_core.clear_cache()
        seen = []

        def check():
            seen.append(1)
            if len(seen) > cancel_at:
                raise Cancelled
        interrupt(check)
        with pytest.raises(Cancelled):
            pez_core.load_model(str(path), device="cpu")
        assert not pez_core.cached_models()  # nothing half-built is kept
