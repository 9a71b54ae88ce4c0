"""Caption a dataset: one prompt per image in a same-name sidecar file (``<image stem>.txt``), as LoRA
trainers (kohya's sd-scripts and others) read them.

A caption is written as soon as its batch is done, so a stop loses at most the batch in flight, and running
the same job again resumes: images that already have a caption are skipped. Every run is batch-invariant
(``PezConfig.batch_invariant``): an image's caption depends only on its pixels, the settings, the model and
the seed (at one torch thread count), never on its batch, the batch size, the order, where a resume started
or which worker ran it.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from ..clip import tasks
from ..clip.joint import AnyModel
from ..common.errors import PezError
from ..engine.config import Callback, PezConfig, PezResult
from .files import IMAGE_EXTENSIONS, ImageFile, check_writable, claimed, find_images, write_atomically

log = logging.getLogger(__name__)

EXISTING_MODES = ("skip", "overwrite", "append")
DEFAULT_BATCH = 8        # images optimised together (a batch-invariant run's text-tower calls hold 8 on a CPU)
MAX_BATCH = 4096


@dataclass(frozen=True)
class CaptionOptions:
    """Where captions go and what they say besides the learned prompt."""
    ext: str = ".txt"                 # the caption file's extension
    out: Path | None = None           # None: beside each image; else the same relative place under this folder
    manifest: Path | None = None      # a JSONL line per image captioned or failed
    existing: str = "skip"            # an image that has a caption: skip it, overwrite it, or append to it
    prefix: str = ""                  # e.g. a LoRA trigger word, before the prompt (joined with ", ")
    suffix: str = ""
    batch_size: int = DEFAULT_BATCH
    recursive: bool = False

    def validate(self) -> None:
        if not (isinstance(self.ext, str) and self.ext.startswith(".") and len(self.ext) > 1 and "/" not in self.ext):
            raise PezError(f"caption extension must start with a dot, like .txt, got {self.ext!r}")
        if self.ext.lower() in IMAGE_EXTENSIONS:
            raise PezError(f"caption extension {self.ext!r} is an image extension; captions would replace images")
        if self.existing not in EXISTING_MODES:
            raise PezError(f"existing must be one of {', '.join(EXISTING_MODES)}, got {self.existing!r}")
        if isinstance(self.batch_size, bool) or not isinstance(self.batch_size, int) \
                or not 1 <= self.batch_size <= MAX_BATCH:
            raise PezError(f"batch size must be an integer from 1 to {MAX_BATCH}, got {self.batch_size!r}")

    def caption_text(self, prompt: str, existing: str | None) -> str:
        """The file's new text: prefix, prompt and suffix (and, when appending, what it held before)."""
        caption = ", ".join(part for part in (self.prefix.strip(), prompt.strip(), self.suffix.strip()) if part)
        if self.existing == "append" and existing and existing.strip():
            caption = f"{existing.strip()}, {caption}"
        return caption + "\n"


@dataclass
class CaptionProgress:
    done: int                  # images finished this run (written, skipped or failed)
    total: int
    written: int
    skipped: int
    failed: int
    images_per_minute: float   # of the images captioned this run
    eta_seconds: float | None
    prompt: str = ""           # the last caption written
    image: str = ""


@dataclass
class CaptionSummary:
    total: int = 0
    written: int = 0
    skipped: int = 0
    failed: int = 0
    manifest: Path | None = None
    failures: list[tuple[str, str]] = field(default_factory=list)   # (image, error)
    seconds: float = 0.0

    def __str__(self) -> str:
        text = (f"{self.written} written, {self.skipped} skipped, {self.failed} failed of {self.total} images "
                f"in {self.seconds:.0f} s")
        return text + (f"; manifest {self.manifest}" if self.manifest else "")


Progress = Callable[[CaptionProgress], None]


def plan(paths: Sequence[Path], options: CaptionOptions) -> tuple[list[ImageFile], list[ImageFile]]:
    """(every image found, those still to caption), refusing before any work an empty input, an unwritable
    caption folder or two images that would share one caption file."""
    options.validate()
    images = find_images(paths, options.recursive, options.ext, options.out)
    if not images:
        raise PezError(f"no images in {', '.join(map(str, paths))} (looked for {', '.join(IMAGE_EXTENSIONS)}"
                       f"{'' if options.recursive else '; add --recursive for subfolders'})")
    owners: dict[Path, ImageFile] = {}
    for image in images:
        if image.caption in owners:
            raise PezError(f"{owners[image.caption].path} and {image.path} would share the caption file "
                           f"{image.caption}; rename one of them")
        owners[image.caption] = image
    check_writable([image.caption.parent for image in images])
    if options.manifest is not None:
        check_writable([Path(options.manifest).parent])
    done = journaled(options)
    todo = [image for image in images if not _finished(image, options, done)]
    return images, todo


def journaled(options: CaptionOptions) -> set[str]:
    """Captions the manifest says were written (how overwrite and append mode resume)."""
    if options.manifest is None or options.existing == "skip" or not Path(options.manifest).exists():
        return set()
    done = set()
    for line in Path(options.manifest).read_text(encoding="utf-8").splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line cut by a crash
            continue
        if row.get("status") == "written":
            done.add(row.get("caption_file"))
    return done


def _finished(image: ImageFile, options: CaptionOptions, journal: set[str]) -> bool:
    if options.existing == "skip":
        return image.caption.exists()
    return str(image.caption) in journal


def caption_images(model: AnyModel, paths: Sequence[Path], config: PezConfig | None = None,
                   options: CaptionOptions | None = None, *, progress: Progress | None = None,
                   step_callback: Callback | None = None, negatives: dict | None = None) -> CaptionSummary:
    """Caption every image under ``paths`` (see the module's docstring); ``progress`` hears after every batch,
    ``step_callback`` during one (an exception it raises stops the job; what is written stays)."""
    options = options or CaptionOptions()
    config = dataclasses.replace(config or PezConfig(), batch_invariant=True)
    config.validate()
    images, todo = plan(paths, options)
    summary = CaptionSummary(total=len(images), skipped=len(images) - len(todo), manifest=options.manifest)
    if not options.manifest and options.existing != "skip":
        log.warning("without a manifest a rerun of this %s job cannot tell which images it already captioned",
                    options.existing)
    started = time.perf_counter()
    journal = journaled(options)
    for first in range(0, len(todo), options.batch_size):
        rows = caption_batch(model, todo[first:first + options.batch_size], config, options, journal,
                             step_callback, negatives)
        record(rows, options, summary)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(progress_of(summary, rows))
    summary.seconds = time.perf_counter() - started
    log.info("captions: %s", summary)
    return summary


def caption_batch(model: AnyModel, batch: Sequence[ImageFile], config: PezConfig, options: CaptionOptions,
                  journal: set[str], step_callback: Callback | None = None, negatives: dict | None = None) -> list[dict]:
    """Caption one batch and write its files; a manifest row per image (written, skipped or failed)."""
    rows = []
    with claimed(batch) as mine:
        rows += [_row(image, "skipped", error="another run is captioning it") for image in batch if image not in mine]
        pending, pictures = [], []
        for image in mine:
            if _finished(image, options, journal):  # another run finished it while this one waited
                rows.append(_row(image, "skipped"))
                continue
            try:
                pictures.append(open_image(image.path))
                pending.append(image)
            except PezError as e:
                rows.append(_row(image, "failed", error=str(e)))
        if pending:
            results = tasks.invert(model, pictures, config, callback=step_callback, **(negatives or {}))
            for image, result in zip(pending, results):
                rows.append(_write(image, result, options))
    return rows


def _write(image: ImageFile, result: PezResult, options: CaptionOptions) -> dict:
    try:
        before = image.caption.read_text(encoding="utf-8") if options.existing == "append" \
            and image.caption.exists() else None
        text = options.caption_text(result.prompt, before)
        write_atomically(image.caption, text)
    except OSError as e:
        return _row(image, "failed", error=f"cannot write {image.caption}: {e.strerror or e}")
    learned = {"learned_prompt": result.learned_prompt} if result.learned_prompt is not None else {}
    return _row(image, "written", prompt=result.prompt, **learned, caption=text.strip(),
                similarity=round(result.similarity, 6), perplexity=result.perplexity)


def open_image(path: Path):
    """The image as RGB pixels, or an error naming the file (empty, truncated, not an image)."""
    from PIL import Image, UnidentifiedImageError
    try:
        if os.path.getsize(path) == 0:
            raise PezError(f"{path} is empty (0 bytes)")
        with Image.open(path) as image:
            image.load()  # decode now: a truncated file fails here, not in the middle of a batch
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as e:
        raise PezError(f"cannot read {path} as an image: {e}") from e


def _row(image: ImageFile, status: str, **fields) -> dict:
    return {"image": str(image.path), "caption_file": str(image.caption), "status": status, **fields}


def record(rows: list[dict], options: CaptionOptions, summary: CaptionSummary) -> None:
    """Count a batch's rows and append the written and failed ones to the manifest (skipped ones are not
    listed again: the run that wrote them did)."""
    for row in rows:
        status = row["status"]
        summary.written += status == "written"
        summary.skipped += status == "skipped"
        summary.failed += status == "failed"
        if status == "failed":
            summary.failures.append((row["image"], row["error"]))
            log.warning("skipped %s: %s", row["image"], row["error"])
    listed = [row for row in rows if row["status"] != "skipped"]
    if options.manifest is not None and listed:
        with open(options.manifest, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps(row) + "\n" for row in listed))
            f.flush()
            os.fsync(f.fileno())


def progress_of(summary: CaptionSummary, rows: list[dict]) -> CaptionProgress:
    done = summary.written + summary.skipped + summary.failed
    rate = summary.written / summary.seconds * 60 if summary.seconds > 0 else 0.0
    left = summary.total - done
    written = [row for row in rows if row["status"] == "written"]
    last = written[-1] if written else rows[-1] if rows else {}
    return CaptionProgress(done, summary.total, summary.written, summary.skipped, summary.failed, rate,
                           left / rate * 60 if rate > 0 else None, last.get("caption", ""), last.get("image", ""))
