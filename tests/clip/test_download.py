"""Downloads of preset weights (pez_core.clip.download) from a stand-in hub on 127.0.0.1: they fail fast and
name the file to save, report their size and progress, and can be cancelled."""
from __future__ import annotations

import pytest

import pez_core
from pez_core import MissingFile, WeightsNotAvailableError
from pez_core.clip import download
from pez_core.common import limits
from fake_hub import FakeHub, SilentHub, closed_port


PRESET_REPO = "laion/CLIP-ViT-B-32-laion2B-s34B-b79K"
SOME_FILE = MissingFile("A / t", "", "A-t.safetensors")  # what a download's messages call it


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
    assert "try again, or pass the file's path as pretrained" in message
    [file] = error.value.files  # what the nodes reword the message from
    assert file.file_name == "ViT-B-32-laion2b_s34b_b79k.safetensors" and file.size > 100e6


def test_a_hub_that_never_answers_fails_at_the_deadline(online, monkeypatch):
    monkeypatch.setattr(download, "CONNECT_TIMEOUT_S", 1.0)  # 8 s in use; benchmarks/hostile.py times it
    with SilentHub() as hub:
        online(hub.url)
        with pytest.raises(WeightsNotAvailableError) as error:
            pez_core.load_model("ViT-B-32 · laion2b_s34b_b79k", device="cpu")
    assert f"{PRESET_REPO}/resolve/main/open_clip_model.safetensors" in str(error.value)
    assert [f.file_name for f in error.value.files] == ["ViT-B-32-laion2b_s34b_b79k.safetensors"]


def test_download_reports_size_and_progress_and_can_be_cancelled(online):
    content = bytes(24 << 20)  # > the hub client's 10 MB read size: several progress steps
    with FakeHub({f"{PRESET_REPO}/open_clip_model.safetensors": (content, 0.002)}) as hub:
        online(hub.url)
        assert not pez_core.preset_is_cached("ViT-B-32 · laion2b_s34b_b79k")
        watch = Recorder()
        path = download.hub_weights(PRESET_REPO, ["open_clip_model.safetensors"], file=SOME_FILE, watcher=watch)
        assert path.read_bytes() == content
        # once in the cache, the preset counts as here (the model dropdown marks it "downloaded")
        assert pez_core.preset_is_cached("ViT-B-32 · laion2b_s34b_b79k")
        assert not pez_core.preset_is_cached("ViT-H-14 · laion2b_s32b_b79k")
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
            download.hub_weights(PRESET_REPO, ["slow.safetensors"], file=SOME_FILE, watcher=watch)
        assert watch.announced and watch.progress_seen[-1][0] < len(content)
