"""Hostile and careless input in the library: bounded tokenizing, bounded caches, checked checkpoints,
bounded runs, downloads that fail fast. (The same through the real server: test_hardening_api.py.)"""
from __future__ import annotations

import json
import logging
import random
import re
import string

import pytest
import torch

import pez_core
from pez_core import ModelLoadError, PezConfig, PezError, WeightsNotAvailableError
from pez_core.clip import download, loading as models, tokenizer as vocab
from pez_core.common import devices, limits
from pez_core.engine import loop as engine
from fake_hub import FakeHub, SilentHub, closed_port
from helpers import TINY_CONFIG, write_tiny_checkpoint


@pytest.fixture(autouse=True)
def fresh_cache():
    models.clear_cache()
    yield
    models.clear_cache()
    limits.set_interrupt_check(None)


# --- tokenizing -------------------------------------------------------------------------------------
def test_tokenizer_gives_open_clips_ids():
    from open_clip.tokenizer import SimpleTokenizer

    reference, ours = SimpleTokenizer(), vocab.ClipTokenizer()
    rng = random.Random(3)
    alphabet = string.ascii_letters + "éüßøçñ日本語中文한국어😀🎨 ,.!?'-0123456789<>"
    texts = ["a photo of a cat", "<start_of_text> twice <end_of_text>", "aaaaaaaaaaaaaaaa", "ababababab"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 80))) for _ in range(1500)]
    texts += ["".join(rng.choice("abcdefghij") for _ in range(rng.randint(100, 1500))) for _ in range(5)]
    for text in texts:
        assert ours.encode(text) == reference.encode(text), text


def test_a_30000_letter_word_is_tokenized_and_round_trips():
    word = "".join(random.Random(0).choice(string.ascii_lowercase) for _ in range(30_000))
    tokenizer = pez_core.clip_tokenizer()
    ids = tokenizer.encode(word)
    assert 3_000 < len(ids) < 30_000
    assert tokenizer.decode(ids).strip() == word


def test_texts_above_the_limit_are_refused_naming_the_input():
    model = pez_core.load_model("shapes-demo", device="cpu")
    huge = "a " * (limits.MAX_TEXT_CHARS // 2 + 1)
    with pytest.raises(PezError, match=r"negative text has 50,002 characters, over the limit of 50,000"):
        model.encode_texts([huge], "negative text")
    with pytest.raises(PezError, match="the blocklist has"):
        pez_core.allowed_token_ids(model.tokenizer, "words", blocklist=huge)
    with pytest.raises(PezError, match="the allowlist has"):
        pez_core.allowed_token_ids(model.tokenizer, "words", allowlist=["cat"] * (limits.MAX_TEXT_CHARS // 3))
    assert model.encode_texts(["a red circle"]).shape[0] == 1  # still fine after refusals


def test_empty_texts_are_named():
    model = pez_core.load_model("shapes-demo", device="cpu")
    with pytest.raises(PezError, match="^negative text 2 is empty"):
        model.encode_texts(["a cat", "\x00\x01"], "negative text")


def test_word_cache_is_bounded(monkeypatch):
    monkeypatch.setattr(vocab, "WORD_CACHE_SIZE", 50)
    tokenizer = vocab.ClipTokenizer()
    rng = random.Random(5)
    tokenizer.encode(" ".join("".join(rng.choice(string.ascii_lowercase) for _ in range(6)) for _ in range(500)))
    tokenizer.encode("z" * 5000)  # longer than CACHED_WORD_CHARS: never kept
    assert len(tokenizer.cache) == 50 and "z" * 5000 not in tokenizer.cache


def test_tokenizing_a_long_text_sees_cancel():
    class Cancelled(Exception):
        pass

    def cancel():
        raise Cancelled

    limits.set_interrupt_check(cancel)
    with pytest.raises(Cancelled):
        vocab.ClipTokenizer().encode("word " * (vocab.INTERRUPT_EVERY + 1))
    assert vocab.ClipTokenizer().encode("a few words")  # short texts finish before the first check


# --- the model cache ----------------------------------------------------------------------------------
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


# --- checkpoints and configs ---------------------------------------------------------------------------
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


# --- run size ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("field", "value", "message"), [
    ("restarts", 3000, "restarts must be an integer from 1 to 64, got 3000"),
    ("steps", 10**9, "steps must be an integer from 1 to 100000"),
    ("seed", -1, "seed must be an integer from 0"),
    ("prompt_len", 500, "prompt length must be an integer from 1 to 75"),
])
def test_config_upper_bounds(field, value, message):
    with pytest.raises(PezError, match=message):
        PezConfig(**{field: value}).validate()


def test_a_run_that_cannot_fit_is_refused_naming_what_to_lower(monkeypatch, tmp_path):
    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    objective = pez_core.Objective.stack([[(model.encode_texts(["a red circle"])[0], 1.0)]] * 4)
    scorer = pez_core.ClipScorer(model, objective)
    config = PezConfig(prompt_len=75, restarts=64, steps=2)
    monkeypatch.setattr(devices, "free_memory", lambda device: 200 << 20)  # a machine with 200 MiB free
    with pytest.raises(PezError) as error:
        engine.check_memory(scorer, config.for_device(model.device))
    message = str(error.value)
    assert "GiB are free; lower restarts from 64 to" in message and "prompt_length from 75 to" in message
    fitting = int(message.split("restarts from 64 to ")[1].split(",")[0])
    engine.check_memory(scorer, PezConfig(prompt_len=75, restarts=fitting).for_device(model.device))  # it fits
    with pytest.raises(PezError):
        engine.check_memory(scorer, PezConfig(prompt_len=75, restarts=fitting + 1).for_device(model.device))


# --- downloads ---------------------------------------------------------------------------------------------
PRESET_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"


@pytest.fixture
def online(monkeypatch, tmp_path):
    """huggingface_hub as if online, with its cache in tmp_path; the endpoint is set by each test (loopback)."""
    from huggingface_hub import constants

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))

    def endpoint(url):
        monkeypatch.setattr(constants, "ENDPOINT", url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", url + "/{repo_id}/resolve/{revision}/{filename}")
    return endpoint


class Recorder:
    def __init__(self):
        self.announced, self.progress_seen = [], []

    def announce(self, text):
        self.announced.append(text)

    def progress(self, done, total):
        self.progress_seen.append((done, total))


def test_unreachable_hub_fails_with_the_file_to_save(online):
    online(f"http://127.0.0.1:{closed_port()}")
    with pytest.raises(WeightsNotAvailableError) as error:
        pez_core.load_model("ViT-B-32 · laion2b_s34b_b79k", device="cpu")
    message = str(error.value)
    assert "could not download the weights of ViT-B-32 / laion2b_s34b_b79k" in message
    assert f"{PRESET_REPO}/resolve/main/open_clip_model.safetensors" in message
    assert "models/pez/ViT-B-32-laion2b_s34b_b79k.safetensors" in message


def test_a_hub_that_never_answers_fails_at_the_deadline(online, monkeypatch):
    monkeypatch.setattr(download, "CONNECT_TIMEOUT_S", 1.0)  # 8 s in use; benchmarks/hostile.py times it
    with SilentHub() as hub:
        online(hub.url)
        with pytest.raises(WeightsNotAvailableError) as error:
            pez_core.load_model("ViT-B-32 · laion2b_s34b_b79k", device="cpu")
    assert "models/pez/ViT-B-32-laion2b_s34b_b79k.safetensors" in str(error.value)


def test_download_reports_size_and_progress_and_can_be_cancelled(online):
    content = bytes(24 << 20)  # > the hub client's 10 MB read size: several progress steps
    with FakeHub({f"{PRESET_REPO}/open_clip_model.safetensors": (content, 0.002)}) as hub:
        online(hub.url)
        watch = Recorder()
        path = download.hub_weights(PRESET_REPO, ["open_clip_model.safetensors"], what="w", arch="A", tag="t",
                                    watcher=watch)
        assert path.read_bytes() == content
        [text] = watch.announced
        assert "open_clip_model.safetensors, 25.2 MB" in text
        assert watch.progress_seen[-1] == (len(content), len(content))
        assert any(done < len(content) for done, _ in watch.progress_seen)

        class Cancelled(Exception):
            pass
        hub.files[f"{PRESET_REPO}/slow.safetensors"] = (bytes([1]) * len(content), 0.05)  # ~20 s in all
        watch = Recorder()

        def cancel_once_started():
            if len(watch.progress_seen) >= 5:  # half a second into the download
                raise Cancelled
        limits.set_interrupt_check(cancel_once_started)
        with pytest.raises(Cancelled):
            download.hub_weights(PRESET_REPO, ["slow.safetensors"], what="w", arch="A", tag="t", watcher=watch)
        assert watch.announced and watch.progress_seen[-1][0] < len(content)


# --- images ----------------------------------------------------------------------------------------------
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


# --- negative images and texts -----------------------------------------------------------------------------------
@pytest.mark.parametrize("weight", [float("inf"), float("-inf"), float("nan"), -0.5, "0.5", True])
def test_a_negative_weight_that_is_no_finite_number_is_refused(tmp_path, weight):
    import numpy as np

    model = pez_core.load_model(str(write_tiny_checkpoint(tmp_path)), device="cpu")
    image = np.random.default_rng(0).random((32, 32, 3))
    for task in (pez_core.invert, pez_core.style):
        with pytest.raises(PezError, match=r"negative_weight must be a finite number >= 0 .* got "):
            task(model, [image], PezConfig(steps=2), negative_images=[image], negative_weight=weight)


@pytest.mark.parametrize("value", ["inf", "nan", "-1", "lots"])
def test_the_cli_refuses_a_non_finite_negative_weight_before_loading(value, capsys, monkeypatch):
    from pez_core import cli

    monkeypatch.setattr(cli, "load_model", lambda *a, **k: pytest.fail("the model was loaded"))
    with pytest.raises(SystemExit) as exited:
        cli.main(["invert", "any.png", "--negative-weight", value])
    assert exited.value.code == 2
    assert f"argument --negative-weight: '{value}': must be a finite number >= 0" in capsys.readouterr().err


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


# --- unreadable configs, names and devices ----------------------------------------------------------------------
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


@pytest.mark.parametrize(("device", "gpus", "message"), [
    ("cuda", 0, "device 'cuda' was asked for but no CUDA GPU is available; use device auto or cpu"),
    ("cuda:3", 1, "device 'cuda:3' was asked for but this machine has 1 CUDA GPU"),
    ("gpu", 0, "unknown device 'gpu'; use auto, cpu, cuda or cuda:N"),
])
def test_a_device_that_is_not_there_is_named(monkeypatch, device, gpus, message):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpus > 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: gpus)
    with pytest.raises(PezError, match=re.escape(message)):
        devices.resolve_device(device)

