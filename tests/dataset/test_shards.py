"""WebDataset shards in and out, written and read back with the ``webdataset`` package."""
from __future__ import annotations

import io
import json

import pytest
import torch

from pez_core import PezConfig, PezError, load_model
from pez_core.dataset import CaptionOptions
from pez_core.dataset.shards import caption_shards
from pez_core.demo import shapes

wds = pytest.importorskip("webdataset")
CONFIG = PezConfig(steps=20, prompt_len=4)


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_model("shapes-demo", device="cpu")


def png(image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_shards(folder, per_shard: int = 2):
    folder.mkdir()
    images, scenes = shapes.sample(5, 2 * per_shard)
    for s in range(2):
        with wds.TarWriter(str(folder / f"shard-{s:05d}.tar")) as sink:
            for i in range(per_shard):
                n = s * per_shard + i
                sink.write({"__key__": f"{n:06d}", "png": png(images[n]), "json": {"n": n}})
            if s == 1:
                sink.write({"__key__": "broken", "png": b"not a png at all"})


def test_shards_get_a_caption_per_sample_and_keep_their_members(demo, tmp_path):
    write_shards(tmp_path / "in")
    manifest = tmp_path / "m.jsonl"
    options = CaptionOptions(out=tmp_path / "out", manifest=manifest, prefix="sks")
    summary = caption_shards(demo, [tmp_path / "in"], CONFIG, options)
    assert (summary.written, summary.failed) == (4, 1)
    samples = list(wds.WebDataset(str(tmp_path / "out" / "shard-{00000..00001}.tar"), shardshuffle=False))
    by_key = {s["__key__"]: s for s in samples}
    assert set(by_key) == {"000000", "000001", "000002", "000003", "broken"}
    for key in ("000000", "000003"):
        assert by_key[key]["txt"].decode().startswith("sks, ") and json.loads(by_key[key]["json"])["n"] == int(key)
    assert "txt" not in by_key["broken"] and by_key["broken"]["png"] == b"not a png at all"
    failed = [json.loads(line) for line in manifest.read_text().splitlines() if '"failed"' in line]
    assert failed[0]["image"].endswith("shard-00001.tar#broken")

    again = caption_shards(demo, [tmp_path / "in"], CONFIG, options)
    assert again.written == 0  # every output shard exists: a rerun resumes by skipping them


def test_webdataset_output_needs_an_out_folder(demo, tmp_path):
    write_shards(tmp_path / "in")
    with pytest.raises(PezError, match="needs --out"):
        caption_shards(demo, [tmp_path / "in"], CONFIG, CaptionOptions())
