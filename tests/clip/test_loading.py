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
