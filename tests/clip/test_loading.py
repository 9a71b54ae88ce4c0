"""Model loading (pez_core.clip.loading): names, checkpoints, configs, offline behaviour, damaged and
hostile files, the model cache, and cancel while loading."""
from __future__ import annotations

import json
import logging

import pytest
import torch

import pez_core
from pez_core import ModelLoadError, PezError, WeightsNotAvailableError
from pez_core.clip import loading as models
from helpers import TINY_CONFIG, Cancelled, write_tiny_checkpoint


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
    assert "unset HF_HUB_OFFLINE" in message and "pass the file's path as pretrained" in message
    assert "models/pez" not in message  # a ComfyUI folder: the nodes say it in their words


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


def test_model_cache_keeps_the_most_recent_few(tmp_path):
    paths = [write_tiny_checkpoint(tmp_path, f"m{i}", seed=i) for i in range(models.MAX_CACHED_MODELS + 1)]
    loaded = [pez_core.load_model(str(p), device="cpu") for p in paths]
    assert len(models.cached_models()) == models.MAX_CACHED_MODELS
    assert pez_core.load_model(str(paths[-1]), device="cpu") is loaded[-1]  # recent: cached
    assert pez_core.load_model(str(paths[0]), device="cpu") is not loaded[0]  # oldest: dropped, loaded anew
    assert models.clear_cache() == models.MAX_CACHED_MODELS and not models.cached_models()


def test_a_replaced_checkpoint_is_loaded_again(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "swap", seed=0)
    first = pez_core.load_model(str(path), device="cpu")
    write_tiny_checkpoint(tmp_path, "swap", seed=1)
    second = pez_core.load_model(str(path), device="cpu")
    assert second is not first
    assert not torch.equal(first.token_embeddings, second.token_embeddings)


def _with_config(tmp_path, config, name="custom"):
    path = write_tiny_checkpoint(tmp_path, name)
    path.with_suffix(".json").write_text(json.dumps(config))
    return path


@pytest.mark.parametrize(("config", "message"), [
    ([1, 2], "must be an open_clip model config"),
    (None, "must be an open_clip model config"),
    ({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "width": -16}}, r"text_cfg.width is -16"),
    ({**TINY_CONFIG, "vision_cfg": "big"}, "vision_cfg must be an object"),
    ({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "width": 10**9}}, "text_cfg.width is 1000000000"),
    ({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "context_length": 64}}, "context length of 77"),
    ({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "width": 32}}, "does not fit"),
    ({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "width": 8192, "layers": 96, "heads": 64}},
     "GiB of memory to load"),
])
def test_bad_configs_fail_before_the_model_is_built(tmp_path, config, message):
    with pytest.raises(ModelLoadError, match=message):
        pez_core.load_model(str(_with_config(tmp_path, config)), device="cpu")


def _rewrite(path, change):
    from safetensors.torch import load_file, save_file

    state = load_file(str(path))
    change(state)
    save_file(state, str(path))


def test_missing_vision_weights_warn_and_missing_text_weights_fail(tmp_path, caplog):
    path = write_tiny_checkpoint(tmp_path, "partial")
    _rewrite(path, lambda s: [s.pop(k) for k in [k for k in s if k.startswith("visual.conv1")]]
             + [s.update({"extra.thing": torch.zeros(1)})])
    with caplog.at_level(logging.WARNING, logger="pez_core.clip.loading"):
        assert pez_core.load_model(str(path), device="cpu")
    assert "1 missing vision-tower weights (visual.conv1.weight)" in caplog.text
    assert "1 unexpected other-tower weights (extra.thing)" in caplog.text
    _rewrite(path, lambda s: s.pop("ln_final.weight"))
    with pytest.raises(ModelLoadError, match=r"1 text-tower weights are missing \(ln_final.weight"):
        pez_core.load_model(str(path), device="cpu")


class NotATensor:
    pass


def test_an_unsafe_pickle_is_refused_without_torchs_hint(tmp_path):
    path = tmp_path / "ViT-B-32-unsafe.pt"
    torch.save({"state_dict": {"x": NotATensor()}}, str(path))
    with pytest.raises(ModelLoadError) as error:
        pez_core.load_model(str(path), device="cpu")
    message = str(error.value)
    assert "could run code" in message and "not loaded" in message
    assert "weights_only" not in message and "likely succeed" not in message


def _nested(depth: int) -> dict:
    section: dict = {"width": 16}
    for _ in range(depth):
        section = {"deeper": section}
    return section


@pytest.mark.parametrize(("content", "message"), [
    (json.dumps(TINY_CONFIG).encode("utf-16"), r"custom.json is not UTF-8 text \(byte 0\)"),
    (b"\xff" + json.dumps(TINY_CONFIG).encode("latin-1"), "is not UTF-8 text"),
    (b"[" * 200_000 + b"]" * 200_000, "custom.json nests too deeply to read"),
    (b'{"a": ' * 200_000 + b"1" + b"}" * 200_000, "bytes, more than the 1,048,576 a config can have"),
    (json.dumps({**TINY_CONFIG, "text_cfg": {**TINY_CONFIG["text_cfg"], "x": _nested(500)}}).encode(),
     "text_cfg.x.deeper.deeper.deeper.deeper.deeper.deeper nests more than 8 levels deep"),
    (b'{"embed_dim": ' + b"9" * 5000 + b"}", "cannot read the model config .*custom.json: Exceeds the limit"),
])
def test_unreadable_configs_are_named(tmp_path, content, message):
    path = write_tiny_checkpoint(tmp_path, "custom")
    path.with_suffix(".json").write_bytes(content)
    with pytest.raises(ModelLoadError, match=message) as error:
        pez_core.load_model(str(path), device="cpu")
    assert "custom.json" in str(error.value)


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


# --- a checkpoint whose name says nothing: its architecture from its tensors ----------------------------------

def _layout_shapes(arch: str) -> dict[str, tuple]:
    """The shapes by which an open_clip architecture's tensors show it, from its config (no model built)."""
    import open_clip

    config = open_clip.get_model_config(arch)
    vision, text, embed = config["vision_cfg"], config["text_cfg"], config["embed_dim"]
    grid = vision["image_size"] // vision["patch_size"]
    shapes = {"visual.conv1.weight": (vision["width"], 3, vision["patch_size"], vision["patch_size"]),
              "visual.positional_embedding": (grid * grid + 1, vision["width"]),
              "visual.proj": (vision["width"], embed),
              "token_embedding.weight": (text.get("vocab_size", 49408), text["width"]),
              "positional_embedding": (text.get("context_length", 77), text["width"]),
              "text_projection": (text["width"], embed)}
    shapes.update({f"visual.transformer.resblocks.{i}.ln_1.weight": (vision["width"],) for i in range(vision["layers"])})
    shapes.update({f"transformer.resblocks.{i}.ln_1.weight": (text["width"],) for i in range(text["layers"])})
    return shapes


def _header_only_checkpoint(path, shapes: dict[str, tuple]):
    """A safetensors file of these shapes whose data is a hole (a sparse file): only its header is ever read."""
    import math
    import struct

    header, offset = {}, 0
    for key, shape in shapes.items():
        header[key] = {"dtype": "F32", "shape": list(shape), "data_offsets": [offset, offset + 4 * math.prod(shape)]}
        offset += 4 * math.prod(shape)
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        f.truncate(8 + len(raw) + offset)
    return path


def test_open_clip_weights_under_the_downloads_name_load_by_their_tensors(tmp_path, caplog):
    """ComfyUI's missing-models dialog saves weights as open_clip_model.safetensors: no architecture in the name."""
    import open_clip
    from safetensors.torch import save_file

    torch.manual_seed(0)
    clip = open_clip.create_model("ViT-B-32")
    path = tmp_path / "open_clip_model.safetensors"
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(path))
    del clip
    with caplog.at_level(logging.INFO, logger="pez_core.clip.loading"):
        model = pez_core.load_model(str(path), device="cpu")
    assert "open_clip_model.safetensors: ViT-B-32, told by its tensors" in caplog.text
    assert "GELU as the preset ViT-B-32 · laion2b_s34b_b79k" in caplog.text  # the preset of ViT-B-32: no QuickGELU
    assert model.image_size == 224 and model.text_width == 512 and model.text_layers == 12
    assert model.clip.visual.conv1.weight.shape == (768, 3, 32, 32)
    assert type(model.clip.transformer.resblocks[0].mlp.gelu) is torch.nn.GELU


def test_the_openai_clip_l_by_its_tensors_takes_quickgelu_from_its_preset(tmp_path, caplog):
    path = _header_only_checkpoint(tmp_path / "open_clip_model.safetensors", _layout_shapes("ViT-L-14"))
    with caplog.at_level(logging.INFO, logger="pez_core.clip.loading"):
        source = models._from_checkpoint(path)
    assert (source.arch, source.quick_gelu, source.weights) == ("ViT-L-14", True, path)
    assert "QuickGELU as the preset ViT-L-14 · openai" in caplog.text and "ViT-L-14-openai.safetensors" in caplog.text
    other = _header_only_checkpoint(tmp_path / "weights.safetensors", _layout_shapes("ViT-L-14-336"))
    assert models._from_checkpoint(other).arch == "ViT-L-14-336"  # its image size tells it apart


def test_a_name_with_a_pretrained_tag_says_quickgelu(tmp_path):
    shapes = _layout_shapes("ViT-B-16")
    assert models._from_checkpoint(_header_only_checkpoint(tmp_path / "ViT-B-16-openai.safetensors", shapes)).quick_gelu
    plain = models._from_checkpoint(_header_only_checkpoint(tmp_path / "ViT-B-16-laion2b_s34b_b88k.safetensors", shapes))
    assert (plain.arch, plain.quick_gelu) == ("ViT-B-16", False)


def test_weights_trained_with_and_without_quickgelu_are_renamed(tmp_path):
    """ViT-B-16: OpenAI's weights use QuickGELU, LAION's do not, and no preset says which this file is."""
    path = _header_only_checkpoint(tmp_path / "open_clip_model.safetensors", _layout_shapes("ViT-B-16"))
    with pytest.raises(ModelLoadError) as error:
        pez_core.load_model(str(path), device="cpu")
    message = str(error.value)
    assert "its tensors are ViT-B-16's" in message and "QuickGELU" in message
    assert "rename it to ViT-B-16-openai.safetensors (QuickGELU) or ViT-B-16-" in message


def test_tensors_that_fit_two_architectures_are_renamed(tmp_path, monkeypatch):
    import open_clip

    config = open_clip.get_model_config("ViT-S-16")
    monkeypatch.setitem(open_clip.factory._MODEL_CONFIGS, "ViT-S-16-twin", {**config, "text_cfg": {
        **config["text_cfg"], "pool_type": "last"}})  # other pooling: the same shapes
    monkeypatch.setattr(models, "_open_clip_layouts", models._open_clip_layouts.__wrapped__)  # not cached
    path = _header_only_checkpoint(tmp_path / "open_clip_model.safetensors", _layout_shapes("ViT-S-16"))
    with pytest.raises(ModelLoadError, match="fit 2 architectures: rename it to ViT-S-16.safetensors or "
                                             "ViT-S-16-twin.safetensors, whichever it is"):
        pez_core.load_model(str(path), device="cpu")


def test_tensors_of_no_open_clip_architecture_say_what_to_do(tmp_path):
    path = write_tiny_checkpoint(tmp_path, "open_clip_model")
    path.with_suffix(".json").unlink()
    with pytest.raises(ModelLoadError) as error:
        pez_core.load_model(str(path), device="cpu")
    message = str(error.value)
    assert "cannot tell the architecture of open_clip_model.safetensors" in message
    assert "fit none of open_clip's architectures" in message and "width 16, 2 layers" in message
    assert "open_clip_model.json beside it" in message and "ViT-L-14-openai.safetensors" in message
    text_encoder = _header_only_checkpoint(tmp_path / "clip_l.safetensors", {
        "text_model.embeddings.token_embedding.weight": (49408, 768)})  # a transformers / ComfyUI text encoder
    with pytest.raises(ModelLoadError, match="clip_l.safetensors: .*not an open_clip CLIP's.*clip_l.json beside it"):
        pez_core.load_model(str(text_encoder), device="cpu")


SDXL = "SDXL (ViT-L-14 · openai + ViT-bigG-14 · laion2b_s39b_b160k)"


def test_a_model_of_several_files_names_every_missing_file_with_its_size(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(WeightsNotAvailableError) as error:
        pez_core.load_model(SDXL, device="cpu")
    message = str(error.value)
    assert f"{SDXL} needs 2 weights files that are not on this machine (about 11.87 GB in all)" in message
    assert "ViT-L-14 / openai: https://huggingface.co/timm/" in message
    assert ("ViT-bigG-14 / laion2b_s39b_b160k: https://huggingface.co/laion/CLIP-ViT-bigG-14-laion2B-39B-b160k/"
            "resolve/main/open_clip_model.safetensors (10.16 GB)") in message
    assert "unset HF_HUB_OFFLINE" in message and "join them with combine()" in message
    assert [f.file_name for f in error.value.files] == ["ViT-L-14-openai.safetensors",
                                                        "ViT-bigG-14-laion2b_s39b_b160k.safetensors"]


def test_a_model_of_several_files_names_only_the_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saved = str(write_tiny_checkpoint(tmp_path, "ViT-L-14-openai-saved"))
    locate = {"ViT-L-14 · openai": saved}
    with pytest.raises(WeightsNotAvailableError) as error:
        pez_core.load_model(SDXL, device="cpu", locate=lambda name: locate.get(name, name))
    message = str(error.value)
    assert "the weights of ViT-bigG-14 / laion2b_s39b_b160k (about 10.16 GB) are not on this machine" in message
    assert "ViT-L-14" not in message
    assert "pass the file's path as pretrained (load_model's argument, the CLI's --pretrained)" in message
