"""PEZ Caption Folder: one caption file per image of a folder in ComfyUI's input directory (e.g. a LoRA dataset)."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from .. import pez_core
from ..pez_core import dataset
from .config import check_choice, make_config
from .progress import LIVE_EVERY_S
from .schema import (blocklist_input, learning_rate_input, model_input, negative_inputs, node_schema, prompt_length_input,
                     readability_inputs, restarts_input, seed_input, steps_input, stopping_inputs, template_input,
                     vocabulary_input)
from .server import prompt_server
from .session import device_session
from .stop import stop_requested
from .values import images_of, texts_of

log = logging.getLogger(__name__)

MANIFEST = "pez_captions.jsonl"
MAX_BATCH = 4096           # CaptionOptions' own limit
SHOWN_FAILURES = 10        # failed images named in the summary; the manifest lists them all
FOLDER_HINT = "name a folder inside ComfyUI's input folder, relative to it, e.g. my_dataset"


class StopAfterBatch(Exception):
    """"stop & use best" on this node: the job ends once the batch in flight is written."""


# --- the folder -------------------------------------------------------------------------------------
def _inside(path: str, root: str) -> bool:
    path, root = os.path.normcase(path), os.path.normcase(root)
    try:
        return os.path.commonpath([path, root]) == root
    except ValueError:  # another drive
        return False


def resolve_folder(folder: Any) -> Path:
    """The folder the ``folder`` input names, resolved (links followed): inside ComfyUI's input directory, or
    an error naming the input. Outside is refused before existence is checked, so nothing is told about it."""
    if not isinstance(folder, str) or not folder.strip():
        raise pez_core.PezError(f"folder is empty: {FOLDER_HINT}")
    pez_core.check_text(folder, "folder")
    root = os.path.realpath(folder_paths.get_input_directory())
    try:
        path = os.path.realpath(os.path.join(root, folder.strip()))
    except (ValueError, OSError) as e:  # e.g. a NUL character
        raise pez_core.PezError(f"folder {folder!r} is not a usable path: {e}") from e
    if not _inside(path, root):
        raise pez_core.PezError(f"folder {folder!r} is outside ComfyUI's input folder ({root}); {FOLDER_HINT}")
    if os.path.normcase(path) == os.path.normcase(root):
        raise pez_core.PezError(f"folder {folder!r} is the input folder itself; {FOLDER_HINT}")
    if not os.path.isdir(path):
        raise pez_core.PezError(f"folder {folder!r} does not exist in ComfyUI's input folder ({root}); {FOLDER_HINT}")
    return Path(path)


def manifest_of(folder: Path, write: bool) -> Path | None:
    """``pez_captions.jsonl`` in the folder, unless it is a link leading out of the input directory."""
    if not write:
        return None
    path = folder / MANIFEST
    if not _inside(os.path.realpath(path), os.path.realpath(folder_paths.get_input_directory())):
        raise pez_core.PezError(f"folder: its {MANIFEST} links outside ComfyUI's input folder; remove the link "
                                "or turn write_manifest off")
    return path


def folder_files(folder: Path, recursive: bool) -> Iterator[os.DirEntry]:
    """The folder's files (and its subfolders' with ``recursive``), hidden names and links to folders left out."""
    with os.scandir(folder) as entries:
        for entry in sorted(entries, key=lambda e: e.name):
            if entry.name.startswith("."):
                continue
            if entry.is_dir(follow_symlinks=False):
                if recursive:
                    yield from folder_files(Path(entry.path), recursive)
            elif entry.is_file():
                yield entry


def folder_state(folder: Path, recursive: bool) -> str:
    """A digest of the folder's files (name, size, time): a new image or a removed caption makes a new run."""
    digest = hashlib.sha256()
    for entry in folder_files(folder, recursive):
        if entry.name != MANIFEST:
            info = entry.stat()
            digest.update(f"{entry.path}\0{info.st_size}\0{info.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def count_images(folder: Path, recursive: bool, ext: str) -> int:
    """The folder's images, refusing an image or caption file that links out of the input directory (the job
    would read it)."""
    root, images = os.path.realpath(folder_paths.get_input_directory()), 0
    for entry in folder_files(folder, recursive):
        suffix = Path(entry.name).suffix.lower()
        if entry.is_symlink() and suffix in (*dataset.IMAGE_EXTENSIONS, ext.lower()) \
                and not _inside(os.path.realpath(entry.path), root):
            name = Path(entry.path).relative_to(folder).as_posix()
            raise pez_core.PezError(f"folder: {name} links outside ComfyUI's input folder; copy the file in instead")
        images += suffix in dataset.IMAGE_EXTENSIONS
    return images


# --- progress on the node ---------------------------------------------------------------------------
def progress_line(p: dataset.CaptionProgress) -> str:
    """"n of N images · X img/min · <last caption>"."""
    rate = f"{p.images_per_minute:.1f}" if p.images_per_minute < 10 else f"{p.images_per_minute:.0f}"
    return " · ".join(part for part in (f"{p.done} of {p.total} images", f"{rate} img/min", p.prompt) if part)


class CaptionLive:
    """The job on the node: ComfyUI's progress bar over images, the progress text, ``pez.progress`` for the
    PEZ web extension's box (the batch's optimisation step over the job's line), Cancel at every step, and
    "stop & use best": the batch in flight is finished and written, then the job ends (its captions are the
    ones a whole run gives them; a rerun captions the rest)."""

    def __init__(self, unique_id: Any, images: int):
        self.node = None if unique_id is None else str(unique_id)
        self.bar = comfy.utils.ProgressBar(max(images, 1))
        self.line = f"0 of {images} images · captioning the first batch"
        self.last: dataset.CaptionProgress | None = None
        self.stopping = False
        self._live_at = 0.0
        self.send(None, text=True)

    def step(self, progress: pez_core.Progress) -> None:
        """The engine's callback during a batch (returns nothing: a batch always runs to its end)."""
        mm.throw_exception_if_processing_interrupted()
        if not self.stopping and stop_requested(self.node):
            self.stopping = True
            log.info("PEZ Caption Folder: stopping after the batch in flight")
            self.send(progress, text=True)
        elif time.monotonic() - self._live_at >= LIVE_EVERY_S:
            self.send(progress)

    def batch(self, p: dataset.CaptionProgress) -> None:
        """After each batch (its captions written)."""
        self.stopping = self.stopping or stop_requested(self.node)  # a batch of unreadable images has no steps
        self.last, self.line = p, progress_line(p)
        self.bar.update_absolute(p.done, p.total)
        self.send(None, text=True)
        mm.throw_exception_if_processing_interrupted()
        if self.stopping and p.done < p.total:
            raise StopAfterBatch

    def finish(self, text: str) -> None:
        """The bar full and the text the summary's first line (also when every image was skipped: no batch ran)."""
        self.bar.update_absolute(self.bar.total, self.bar.total)
        self.line = text.splitlines()[0]
        self.send(None, text=True)

    def send(self, progress: pez_core.Progress | None, text: bool = False) -> None:
        self._live_at = time.monotonic()
        server = prompt_server()
        if server is None or self.node is None:
            return
        from comfy_execution.utils import get_executing_context

        context = get_executing_context()
        line = self.line + (" · stopping after this batch" if self.stopping else "")
        server.send_sync("pez.progress", {
            "stage": "captions", "node": self.node, "display_node": self.node, "prompt": line,
            "step": None if progress is None else int(progress.step),
            "total": None if progress is None else int(progress.total),
            "similarity": None if progress is None else float(progress.similarity),
            "prompts": [] if progress is None else list(progress.prompts),
            "similarities": [] if progress is None else [float(s) for s in progress.similarities],
            "prompt_id": context.prompt_id if context is not None else server.last_prompt_id}, server.client_id)
        if text:
            server.send_progress_text(line, self.node)


def summary_text(summary: dataset.CaptionSummary, folder: Path, last: dataset.CaptionProgress | None) -> str:
    """The one-line summary, the last caption written, then the images that failed (the first few) and why."""
    lines = [str(dataclasses.replace(summary, manifest=None))]  # the manifest is an output of its own
    if last is not None and last.prompt:
        lines.append(f"last caption: {last.prompt} ({Path(last.image).name})")
    for image, error in summary.failures[:SHOWN_FAILURES]:
        name = Path(image).relative_to(folder).as_posix() if _inside(image, str(folder)) else image
        lines.append(f"failed: {name}: {error.replace(str(folder) + os.sep, '')}")
    if len(summary.failures) > SHOWN_FAILURES:
        lines.append(f"... and {len(summary.failures) - SHOWN_FAILURES} more failed (see the manifest)")
    return "\n".join(lines)


def stopped_text(last: dataset.CaptionProgress) -> str:
    return (f"stopped after {last.done} of {last.total} images: {last.written} written, {last.skipped} skipped, "
            f"{last.failed} failed; run again to caption the rest")


# --- the node ---------------------------------------------------------------------------------------
def caption_inputs() -> list[io.Input]:
    return [
        io.String.Input("folder", default="", tooltip=(
            "A folder inside ComfyUI's input folder, e.g. my_dataset for ComfyUI/input/my_dataset. Each image in it "
            "gets a caption file of the same name beside it (cat.png → cat.txt).")),
        io.Boolean.Input("recursive", default=False, tooltip="Also caption the images in its subfolders."),
        io.String.Input("caption_extension", default=".txt", tooltip=(
            "Extension of the caption files: .txt for most LoRA trainers, or e.g. .caption.")),
        io.Combo.Input("existing", options=list(dataset.EXISTING_MODES), default="skip", tooltip=(
            "An image that already has a caption file. skip: leave it, so running again carries on where a "
            "stopped run ended; overwrite: replace it; append: add the new caption after the old one.")),
        io.String.Input("prefix", default="", tooltip=(
            "Put before every caption, e.g. your LoRA's trigger word (joined with ', ').")),
        io.String.Input("suffix", default="", tooltip="Put after every caption (joined with ', ')."),
        io.Boolean.Input("write_manifest", default=True, tooltip=(
            f"Also list each image with its caption and similarity, or why it failed, in {MANIFEST} in the folder. "
            "Overwrite and append runs use it to carry on after a stop.")),
        io.Int.Input("batch_size", default=dataset.DEFAULT_BATCH, min=1, max=MAX_BATCH, tooltip=(
            "Images optimised together: more is faster on a GPU and needs more memory. The captions are the same "
            "whatever the size; Cancel loses at most the batch in flight.")),
    ]


def retold(item: io.Input, tooltip: str) -> io.Input:
    """A shared input with what it means on this node."""
    item.tooltip = tooltip
    return item


def optional_inputs() -> list[io.Input]:
    """The Invert node's optional inputs; the time budget and the target end a whole batch here."""
    told = {"time_budget": "Seconds for each batch. With a limit, a caption depends on the machine's speed and on "
                           "the images it was batched with.",
            "target_similarity": "Ends a batch once every prompt in it reaches this similarity. With one, a caption "
                                 "depends on the images it was batched with."}
    stopping = [retold(item, told[item.id]) if item.id in told else item for item in stopping_inputs()]
    return [blocklist_input(), *negative_inputs(), *stopping, *readability_inputs(), template_input()]


def caption_options(folder: Path, recursive: bool, extension: str, existing: str, prefix: str, suffix: str,
                    write_manifest: bool, batch_size: int) -> dataset.CaptionOptions:
    check_choice("existing", existing, dataset.EXISTING_MODES)
    ext = pez_core.check_text(extension, "caption_extension").strip()
    options = dataset.CaptionOptions(
        ext=ext if not ext or ext.startswith(".") else f".{ext}", manifest=manifest_of(folder, write_manifest),
        existing=existing, prefix=pez_core.check_text(prefix, "prefix"), suffix=pez_core.check_text(suffix, "suffix"),
        batch_size=batch_size, recursive=bool(recursive))
    options.validate()
    return options


class CaptionFolder(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return node_schema(
            "PEZ_CaptionFolder", "PEZ Caption Folder",
            "Caption every image of a folder in ComfyUI's input folder with a learned prompt, in a text file beside "
            "each image, as LoRA trainers read them. Running it again skips the images already captioned.",
            [model_input(), *caption_inputs(), prompt_length_input(),
             retold(steps_input(), "Optimisation steps for each image (a batch runs them together). A few hundred give "
                    "usable captions; the more, the closer. Cancel keeps the captions already written."), restarts_input(),
             learning_rate_input(), seed_input(), vocabulary_input(), *optional_inputs()],
            [io.String.Output("summary", display_name="summary", tooltip=(
                "How many captions were written, skipped and failed, and which images failed.")),
             io.String.Output("manifest_path", display_name="manifest_path", tooltip=(
                 f"Where {MANIFEST} is (empty when write_manifest is off)."))])

    @classmethod
    def validate_inputs(cls, folder: str | None = None) -> bool | str:
        # the folder alone here, so ComfyUI names only it; None when linked (checked when the node runs)
        if folder is None:
            return True
        try:
            resolve_folder(folder)
        except pez_core.PezError as e:
            return str(e)
        return True

    @classmethod
    def fingerprint_inputs(cls, folder: str | None = None, recursive: bool = False, **_: Any) -> Any:
        """Run again when the folder's files changed (an image added, a caption removed), else the cached summary."""
        try:
            return folder_state(resolve_folder(folder), bool(recursive))
        except (pez_core.PezError, OSError):
            return math.nan  # never equal: run, and report the error

    @classmethod
    def execute(cls, pez_model: Any, folder: str, recursive: bool, caption_extension: str, existing: str, prefix: str,
                suffix: str, write_manifest: bool, batch_size: int, prompt_length: int, steps: int, restarts: int,
                learning_rate: float, seed: int, vocabulary: str, blocklist: str | None = "", negative_images: Any = None,
                negative_text: str | None = "", polish: str | None = None, time_budget: float | None = 0.0,
                target_similarity: float | None = 0.0, readability: str | None = None,
                fluency: float | None = 0.0, template: str | None = "") -> io.NodeOutput:
        check_choice("vocabulary", vocabulary, pez_core.VOCAB_MODES)
        config = make_config(prompt_length=prompt_length, steps=steps, seed=seed, vocabulary=vocabulary,
                             restarts=restarts, learning_rate=learning_rate, blocklist=blocklist, polish=polish,
                             time_budget=time_budget, target_similarity=target_similarity, readability=readability,
                             fluency=fluency, template=template)
        path = resolve_folder(folder)
        options = caption_options(path, recursive, caption_extension, existing, prefix, suffix, write_manifest,
                                  batch_size)
        with device_session(pez_model):
            negatives = {"negative_images": images_of(negative_images, "negative_images") or None,
                         "negative_texts": texts_of(negative_text or "", "negative_text") or None}
            text, counts = cls.run(pez_model, path, config, options, negatives)
        manifest = str(options.manifest) if options.manifest else ""
        return io.NodeOutput(text, manifest, ui={"text": [text], "pez_captions": [{**counts, "manifest": manifest}]})

    @classmethod
    def run(cls, model: Any, folder: Path, config: pez_core.PezConfig, options: dataset.CaptionOptions,
            negatives: dict) -> tuple[str, dict[str, Any]]:
        """The job, with its progress on the node: the summary text and the counts."""
        images = count_images(folder, options.recursive, options.ext)
        if not images:
            raise pez_core.PezError(f"folder: no images in {folder.name} (looked for {', '.join(dataset.IMAGE_EXTENSIONS)})"
                                    + ("" if options.recursive else "; turn recursive on to caption its subfolders"))
        live = CaptionLive(cls.hidden.unique_id, images)
        try:
            summary = dataset.caption_images(model, [folder], config, options, progress=live.batch,
                                             step_callback=live.step, negatives=negatives)
            text, stopped, source = summary_text(summary, folder, live.last), False, summary
        except StopAfterBatch:  # live.last: the batch that was written last
            text, stopped, source = stopped_text(live.last), True, live.last
            log.info("PEZ Caption Folder: %s", text)
        live.finish(text)
        return text, {**{k: getattr(source, k) for k in ("total", "written", "skipped", "failed")}, "stopped": stopped}
