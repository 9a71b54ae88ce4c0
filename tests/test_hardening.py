"""Hostile and careless input in the library: bounded tokenizing, bounded caches, checked checkpoints,
bounded runs, downloads that fail fast. (The same through the real server: test_hardening_api.py.)"""
from __future__ import annotations

import json
import logging
import random
import string

import pytest
import torch

import pez_core
from pez_core import ModelLoadError, PezConfig, PezError, WeightsNotAvailableError, download, engine, limits, models
from pez_core import vocab
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
    tokenizer = models.clip_tokenizer()
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
    with caplog.at_level(logging.WARNING, logger="pez_core.models"):
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
    monkeypatch.setattr(engine, "free_memory", lambda device: 200 << 20)  # a machine with 200 MiB free
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
