"""PEZ Caption Folder through a real ComfyUI server (tiny random-weight CLIP, CPU, a few steps): a folder in the
server's input directory gets one caption file per good image; a bad image is reported, a non-image ignored; a
second run skips what is captioned; folders outside the input directory are refused, naming the ``folder``
input; Cancel keeps the captions already written, and "stop & use best" ends the job after the batch in flight."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import pytest

from api import RawClient, model_node
from comfy_harness import ComfyServer, PromptRejected, RunResult
from helpers import png_bytes

MANIFEST = "pez_captions.jsonl"
COLOURS = ["red", "blue", "green", "orange", "purple", "yellow", "black", "pink"]
SHAPES = ["ellipse", "rectangle"]
LINE = re.compile(r"^\d+ of \d+ images · [\d.]+ img/min")  # the progress text: "n of N images · X img/min · caption"


def make_folder(server: ComfyServer, name: str, images: int, extra: dict[str, bytes] | None = None) -> Path:
    """``<input>/<name>`` with ``images`` small PNGs (img_00.png, ...) and the ``extra`` files."""
    folder = server.input_dir / name
    folder.mkdir()
    for i in range(images):
        spec = ((48, 40), "RGB", "white", COLOURS[i % len(COLOURS)], SHAPES[i // len(COLOURS) % 2])
        (folder / f"img_{i:02d}.png").write_bytes(png_bytes(*spec))
    for file, content in (extra or {}).items():
        (folder / file).write_bytes(content)
    return folder


def caption_graph(folder: str, *, steps: int = 4, batch_size: int = 8, **extra: Any) -> dict[str, Any]:
    inputs = {"pez_model": ["m", 0], "folder": folder, "recursive": False, "caption_extension": ".txt",
              "existing": "skip", "prefix": "sks", "suffix": "photo", "write_manifest": True, "batch_size": batch_size,
              "prompt_length": 4, "steps": steps, "restarts": 0, "learning_rate": 0.1, "seed": 0,
              "vocabulary": "words", "polish": "off", **extra}
    return {"m": model_node(), "cap": {"class_type": "PEZ_CaptionFolder", "inputs": inputs}}


def counts(result: RunResult) -> dict[str, Any]:
    assert result.ok, (result.status, (result.error or {}).get("exception_message"))
    [found] = result.outputs["cap"]["pez_captions"]
    return found


def manifest_rows(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / MANIFEST).read_text(encoding="utf-8").splitlines()]


def captions(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text(encoding="utf-8") for p in sorted(folder.glob("*.txt"))}


def wait_for_bar(server: ComfyServer, prompt_id: str, at_least: int) -> None:
    """Until the node's progress bar (one tick per image) reached ``at_least``."""
    deadline = time.monotonic() + 60
    while not any(m["type"] == "progress" and m["data"].get("node") == "cap" and m["data"]["value"] >= at_least
                  for m in server.messages(prompt_id)):
        assert time.monotonic() < deadline, "the job never reported a finished image"
        time.sleep(0.02)


def test_captions_a_folder_then_resumes(comfy_server: ComfyServer) -> None:
    folder = make_folder(comfy_server, "pez_caption_basic", 3, {"broken.png": b"", "notes.md": b"# not an image\n"})
    client = RawClient(comfy_server)
    try:
        prompt_id, frames = client.run(caption_graph(folder.name), timeout=90)
    finally:
        client.close()
    first = comfy_server.wait(prompt_id, timeout=30)
    assert counts(first) == {"total": 4, "written": 3, "skipped": 0, "failed": 1, "stopped": False,
                             "manifest": str(folder.resolve() / MANIFEST)}
    written = captions(folder)
    assert sorted(written) == ["img_00.txt", "img_01.txt", "img_02.txt"]  # none for broken.png nor notes.md
    assert all(re.fullmatch(r"sks, \S.*, photo\n", text) for text in written.values()), written
    [summary] = first.outputs["cap"]["text"]
    assert summary.startswith("3 written, 0 skipped, 1 failed of 4 images") and "failed: broken.png: " in summary
    rows = manifest_rows(folder)
    assert sorted((Path(r["image"]).name, r["status"]) for r in rows) == [
        ("broken.png", "failed"), ("img_00.png", "written"), ("img_01.png", "written"), ("img_02.png", "written")]
    assert "empty" in next(r["error"] for r in rows if r["status"] == "failed")
    texts = [f[2] for _, f in frames if isinstance(f, tuple) and f[1] == "cap"]
    assert any(LINE.match(t) and t.endswith(", photo") for t in texts), texts  # after the batch: its last caption
    bars = [f["data"] for _, f in frames if isinstance(f, dict) and f["type"] == "progress"]
    assert bars and bars[-1]["value"] == bars[-1]["max"] == 4

    again = comfy_server.run(caption_graph(folder.name), timeout=90)  # the captions changed the folder: runs
    assert counts(again)["written"] == 0 and counts(again)["skipped"] == 3 and counts(again)["failed"] == 1
    assert captions(folder) == written
    unchanged = comfy_server.run(caption_graph(folder.name), timeout=90)  # nothing changed: ComfyUI's cache
    assert "cap" in {n for m in unchanged.of_type("execution_cached") for n in m["nodes"]}
    assert unchanged.outputs["cap"] == again.outputs["cap"]


@pytest.fixture(scope="module")
def outside(comfy_server: ComfyServer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder of images outside the input directory, and a link to it inside."""
    folder = tmp_path_factory.mktemp("outside-input")
    (folder / "secret.png").write_bytes(png_bytes((32, 32), "RGB", "white", "red", "ellipse"))
    link = comfy_server.input_dir / "pez_caption_link_out"
    if not link.is_symlink():
        link.symlink_to(folder, target_is_directory=True)
    return folder


REFUSED = {  # the folder input's value (from the folder outside), what the error says
    "dot-dot": (lambda out: "..", "outside"),
    "dot-dot into the outside": (lambda out: f"../{'../' * 8}{str(out).lstrip('/')}", "outside"),
    "absolute path outside": (lambda out: str(out), "outside"),
    "link to the outside": (lambda out: "pez_caption_link_out", "outside"),
    "the input folder itself": (lambda out: ".", "input folder itself"),
    "missing folder": (lambda out: "pez_no_such_folder", "does not exist"),
    "empty": (lambda out: "  ", "empty"),
}


@pytest.mark.parametrize("case", REFUSED)
def test_a_folder_outside_the_input_directory_is_refused(comfy_server: ComfyServer, outside: Path, case: str) -> None:
    value, says = REFUSED[case][0](outside), REFUSED[case][1]
    with pytest.raises(PromptRejected) as refused:  # before anything runs, the input named
        comfy_server.queue(caption_graph(value))
    errors = refused.value.body["node_errors"]["cap"]["errors"]
    assert {e["extra_info"]["input_name"] for e in errors} == {"folder"}, errors
    assert all("folder" in e["details"] and says in e["details"] for e in errors), errors
    assert not (outside / "secret.txt").exists() and not (outside / MANIFEST).exists()


def test_an_image_linking_outside_is_refused(comfy_server: ComfyServer, outside: Path) -> None:
    folder = make_folder(comfy_server, "pez_caption_image_link", 1)
    (folder / "linked.png").symlink_to(outside / "secret.png")
    result = comfy_server.run(caption_graph(folder.name), timeout=60)
    assert result.status == "error", result.status
    assert "linked.png links outside" in result.error["exception_message"], result.error["exception_message"]
    assert not captions(folder) and not (outside / "secret.txt").exists()


def test_cancel_keeps_the_captions_written(comfy_server: ComfyServer) -> None:
    folder = make_folder(comfy_server, "pez_caption_cancel", 12)
    prompt_id = comfy_server.queue(caption_graph(folder.name, steps=60, batch_size=1))
    wait_for_bar(comfy_server, prompt_id, 2)
    comfy_server.interrupt()
    result = comfy_server.wait(prompt_id, timeout=60)
    assert result.status == "interrupted"
    kept = captions(folder)
    assert 2 <= len(kept) < 12, sorted(kept)
    assert all(re.fullmatch(r"sks, \S.*, photo\n", text) for text in kept.values()), kept  # whole files only
    assert sorted(Path(r["caption_file"]).name for r in manifest_rows(folder)) == sorted(kept)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]  # no locks or temporary files left
    resumed = counts(comfy_server.run(caption_graph(folder.name, steps=4, batch_size=8), timeout=90))
    assert (resumed["skipped"], resumed["written"]) == (len(kept), 12 - len(kept))
    assert {k: v for k, v in captions(folder).items() if k in kept} == kept


def test_stop_ends_the_job_after_the_batch_in_flight(comfy_server: ComfyServer) -> None:
    folder = make_folder(comfy_server, "pez_caption_stop", 10)
    prompt_id = comfy_server.queue(caption_graph(folder.name, steps=60, batch_size=1))
    wait_for_bar(comfy_server, prompt_id, 1)
    answer = comfy_server.request("POST", "/pez/stop", json={"node_id": "cap"})
    assert answer.status_code == 200 and answer.json() == {"stopping": True}, answer.text
    stopped = counts(comfy_server.wait(prompt_id, timeout=60))
    assert stopped["stopped"] is True and 1 <= stopped["written"] < 10, stopped
    assert len(captions(folder)) == stopped["written"]
