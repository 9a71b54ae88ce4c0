"""An image's caption depends only on its pixels, the settings, the model and the seed: one folder captioned in
one run, in batches of 1 and of 7, in a different order, resumed after ``kill -9``, and on a real local Ray
cluster with two CPU workers gives byte-identical caption files (fresh processes, one torch thread each)."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pez_core.demo import shapes

IMAGES = 9
STEPS = ["--model", "shapes-demo", "--steps", "30", "--prompt-len", "5", "--seed", "7", "--threads", "1"]


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("images")
    images, _ = shapes.sample(11, IMAGES)
    for i, image in enumerate(images):
        image.save(folder / f"{i:02d}.png")
    return folder


def caption(inputs: list[Path], out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pez_core", "caption", *map(str, inputs), "--out", str(out), *STEPS, *extra]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def captions(out: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(out.glob("*.txt"))}


@pytest.fixture(scope="module")
def reference(folder, tmp_path_factory) -> dict[str, bytes]:
    out = tmp_path_factory.mktemp("one-run")
    caption([folder], out, "--batch-size", str(IMAGES))
    found = captions(out)
    assert len(found) == IMAGES and all(text.strip() for text in found.values())
    return found


@pytest.mark.parametrize("batch", [1, 7])
def test_every_batch_size_gives_the_same_files(folder, reference, tmp_path, batch):
    caption([folder], tmp_path, "--batch-size", str(batch))
    assert captions(tmp_path) == reference


def test_another_order_gives_the_same_files(folder, reference, tmp_path):
    files = sorted(folder.glob("*.png"), reverse=True)  # given one by one: the job keeps this order
    caption(files, tmp_path, "--batch-size", "4")
    assert captions(tmp_path) == reference


def test_a_job_killed_and_resumed_gives_the_same_files_each_written_once(folder, reference, tmp_path):
    manifest = tmp_path / "manifest.jsonl"
    out = tmp_path / "out"
    command = [sys.executable, "-m", "pez_core", "caption", str(folder), "--out", str(out), *STEPS,
               "--batch-size", "2", "--manifest", str(manifest)]
    job = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while len(list(out.glob("*.txt"))) < 3 and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, "the job ended before it could be killed; give it more images"
        job.send_signal(signal.SIGKILL)
    finally:
        job.wait()
    written_before = len(list(out.glob("*.txt")))
    assert 3 <= written_before < IMAGES
    resumed = caption([folder], out, "--batch-size", "2", "--manifest", str(manifest), "--json")
    summary = json.loads(resumed.stdout)
    assert summary["skipped"] == written_before and summary["written"] == IMAGES - written_before
    assert captions(out) == reference
    written = [json.loads(line)["image"] for line in manifest.read_text().splitlines()
               if json.loads(line)["status"] == "written"]
    assert len(written) == len(set(written)) <= IMAGES  # none twice (a kill may fall between file and line)
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no half file, no lock left


def test_two_runs_at_once_caption_every_image_once(folder, reference, tmp_path):
    out = tmp_path / "out"
    jobs = [subprocess.Popen([sys.executable, "-m", "pez_core", "caption", str(folder), "--out", str(out), *STEPS,
                              "--batch-size", "1", "--manifest", str(tmp_path / f"run{i}.jsonl")],
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for i in range(2)]
    for job in jobs:
        assert job.wait(timeout=600) == 0, job.stderr.read()[-3000:]
    written = [json.loads(line)["image"] for i in range(2) if (tmp_path / f"run{i}.jsonl").exists()
               for line in (tmp_path / f"run{i}.jsonl").read_text().splitlines() if '"written"' in line]
    assert sorted(written) == sorted(set(written)) and len(written) == IMAGES
    assert captions(out) == reference


def test_two_ray_workers_give_the_same_files(folder, reference, tmp_path):
    pytest.importorskip("ray")
    done = caption([folder], tmp_path, "--batch-size", "3", "--ray", "--workers", "2", "--json", timeout=900)
    assert json.loads(done.stdout)["written"] == IMAGES
    assert captions(tmp_path) == reference
