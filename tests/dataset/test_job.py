"""The caption job on one machine: which files it reads and writes, resume, the existing modes, bad input."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from pez_core import PezConfig, PezError, load_model
from pez_core.dataset import CaptionOptions, caption_images
from pez_core.dataset.files import claimed, find_images
from pez_core.demo import shapes

CONFIG = PezConfig(steps=20, prompt_len=4)


@pytest.fixture(scope="module")
def demo():
    torch.set_num_threads(1)
    return load_model("shapes-demo", device="cpu")


def write_images(folder: Path, count: int, seed: int = 3, prefix: str = "img") -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    images, _ = shapes.sample(seed, count)
    paths = []
    for i, image in enumerate(images):
        image.save(folder / f"{prefix}{i}.png")
        paths.append(folder / f"{prefix}{i}.png")
    return paths


def manifest_rows(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_a_folder_gets_one_caption_per_image_and_bad_files_are_listed_not_fatal(demo, tmp_path):
    write_images(tmp_path, 3)
    write_images(tmp_path / "sub", 1, prefix="deep")
    (tmp_path / "notes.md").write_text("not an image")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "cut.png").write_bytes((tmp_path / "img0.png").read_bytes()[:120])
    (tmp_path / "fake.jpg").write_text("text, not a jpeg")
    summary = caption_images(demo, [tmp_path], CONFIG, CaptionOptions(manifest=tmp_path / "m.jsonl", prefix="sks",
                                                                         batch_size=2))
    assert (summary.written, summary.failed, summary.total) == (3, 3, 6)
    assert not (tmp_path / "sub" / "deep0.txt").exists() and not (tmp_path / "notes.txt").exists()
    rows = {Path(r["image"]).name: r for r in manifest_rows(tmp_path / "m.jsonl")}
    assert {n for n, r in rows.items() if r["status"] == "failed"} == {"empty.png", "cut.png", "fake.jpg"}
    assert "0 bytes" in rows["empty.png"]["error"] and "truncated" in rows["cut.png"]["error"]
    caption = (tmp_path / "img1.txt").read_text()
    assert caption == f"sks, {rows['img1.png']['prompt']}\n" and rows["img1.png"]["caption"] == caption.strip()
    assert 0 < rows["img1.png"]["similarity"] <= 1
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or lock file is left

    again = caption_images(demo, [tmp_path], CONFIG, CaptionOptions(manifest=tmp_path / "m.jsonl", recursive=True))
    assert (again.written, again.skipped) == (1, 3)  # only the new subfolder's image; the failed are retried
    assert (tmp_path / "sub" / "deep0.txt").exists()


def test_out_folder_mirrors_the_tree_and_suffix_and_extension_apply(demo, tmp_path):
    write_images(tmp_path / "in" / "a", 1)
    caption_images(demo, [tmp_path / "in"], CONFIG, CaptionOptions(out=tmp_path / "out", ext=".caption",
                                                                     suffix="best quality", recursive=True))
    text = (tmp_path / "out" / "a" / "img0.caption").read_text()
    assert text.endswith(", best quality\n") and not list((tmp_path / "in").rglob("*.caption"))


def test_overwrite_replaces_and_append_adds_and_both_resume_from_the_manifest(demo, tmp_path):
    write_images(tmp_path, 2)
    for name in ("img0", "img1"):
        (tmp_path / f"{name}.txt").write_text("hand written\n")
    manifest = tmp_path / "m.jsonl"
    first = caption_images(demo, [tmp_path], CONFIG, CaptionOptions(existing="append", manifest=manifest))
    assert first.written == 2
    appended = (tmp_path / "img0.txt").read_text()
    assert appended.startswith("hand written, ") and appended.count("\n") == 1
    rerun = caption_images(demo, [tmp_path], CONFIG, CaptionOptions(existing="append", manifest=manifest))
    assert (rerun.written, rerun.skipped) == (0, 2) and (tmp_path / "img0.txt").read_text() == appended
    replaced = caption_images(demo, [tmp_path], CONFIG, CaptionOptions(existing="overwrite"))
    assert replaced.written == 2 and (tmp_path / "img0.txt").read_text() == appended.split(", ", 1)[1]


@pytest.mark.parametrize("options, paths, message", [
    (CaptionOptions(), ["missing"], "input not found"),
    (CaptionOptions(), ["empty"], "no images in"),
    (CaptionOptions(ext="txt"), ["images"], "must start with a dot"),
    (CaptionOptions(ext=".png"), ["images"], "image extension"),
    (CaptionOptions(existing="replace"), ["images"], "existing must be one of"),
    (CaptionOptions(batch_size=0), ["images"], "batch size"),
])
def test_bad_options_and_inputs_are_refused_before_any_work(demo, tmp_path, options, paths, message):
    write_images(tmp_path / "images", 1)
    (tmp_path / "empty").mkdir()
    with pytest.raises(PezError, match=message):
        caption_images(demo, [tmp_path / p for p in paths], CONFIG, options)
    assert not list(tmp_path.rglob("*.txt"))


def test_an_output_folder_that_cannot_be_written_is_refused_first(demo, tmp_path):
    write_images(tmp_path / "images", 1)
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the folder should be")
    with pytest.raises(PezError, match=f"cannot write captions to {blocked}"):
        caption_images(demo, [tmp_path / "images"], CONFIG, CaptionOptions(out=blocked / "captions"))


def test_two_images_that_would_share_a_caption_file_are_refused(demo, tmp_path):
    write_images(tmp_path, 1)
    (tmp_path / "img0.jpg").write_bytes((tmp_path / "img0.png").read_bytes())
    with pytest.raises(PezError, match="would share the caption file"):
        caption_images(demo, [tmp_path], CONFIG)


def test_an_image_another_run_is_captioning_is_left_to_it(demo, tmp_path):
    write_images(tmp_path, 2)
    images = find_images([tmp_path], False, ".txt", None)
    with claimed(images[:1]) as mine:  # as another process would hold it (flock is per open file)
        assert mine == images[:1]
        summary = caption_images(demo, [tmp_path], CONFIG)
    assert (summary.written, summary.skipped) == (1, 1)
    assert not (tmp_path / "img0.txt").exists() and (tmp_path / "img1.txt").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes anywhere")
def test_a_read_only_folder_is_refused(demo, tmp_path):
    write_images(tmp_path, 1)
    tmp_path.chmod(0o555)
    try:
        with pytest.raises(PezError, match="cannot write captions"):
            caption_images(demo, [tmp_path], CONFIG)
    finally:
        tmp_path.chmod(0o755)


def test_a_template_frames_each_caption_inside_the_prefix(demo, tmp_path):
    write_images(tmp_path, 1)
    manifest = tmp_path / "m.jsonl"
    caption_images(demo, [tmp_path], PezConfig(steps=20, prompt_len=3, template="a star, {}"),
                   CaptionOptions(prefix="sks", manifest=manifest))
    [row] = manifest_rows(manifest)
    assert row["prompt"] == f"a star, {row['learned_prompt']}"
    assert (tmp_path / "img0.txt").read_text() == f"sks, {row['prompt']}\n"


def test_the_cli_refuses_an_empty_folder_before_it_loads_a_model(tmp_path):
    import subprocess
    import sys
    done = subprocess.run([sys.executable, "-m", "pez_core", "caption", str(tmp_path), "--model", "no-such-model"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "no images in" in done.stderr and "no-such-model" not in done.stderr
