"""WebDataset shards in and out: ``.tar`` files whose members ``<key>.<ext>`` make up samples (the layout
img2dataset and clip-retrieval write). Each input shard becomes a shard of the same name under the output
folder holding every member it had plus ``<key><caption ext>``; a shard is written whole (temporary file, then
rename), so it is the unit a rerun skips."""
from __future__ import annotations

import io
import logging
import os
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Sequence

from ..clip.joint import AnyModel
from ..common.errors import PezError
from ..engine.config import Callback, PezConfig
from .files import IMAGE_EXTENSIONS, atomic_file, check_writable
from .job import CaptionOptions, CaptionSummary, Progress, open_image, progress_of, record

log = logging.getLogger(__name__)


def find_shards(paths: Sequence[Path], recursive: bool) -> list[Path]:
    shards = []
    for root in map(Path, paths):
        if root.is_dir():
            shards += sorted(root.rglob("*.tar") if recursive else root.glob("*.tar"))
        elif root.is_file() and root.suffix == ".tar":
            shards.append(root)
        else:
            raise PezError(f"not a WebDataset shard or a folder of them: {root} (give .tar files or their folders)")
    if not shards:
        raise PezError(f"no .tar shards in {', '.join(map(str, paths))}")
    return shards


def plan_shards(paths: Sequence[Path], options: CaptionOptions) -> tuple[list[Path], list[Path]]:
    """(every shard, those without an output shard yet), refusing a missing or unwritable --out first."""
    options.validate()
    if options.out is None:
        raise PezError("WebDataset output needs --out, a folder for the captioned shards")
    shards = find_shards(paths, options.recursive)
    check_writable([Path(options.out)])
    return shards, [s for s in shards if options.existing != "skip" or not output_of(s, options).exists()]


def output_of(shard: Path, options: CaptionOptions) -> Path:
    return Path(options.out) / shard.name


def caption_shards(model: AnyModel, paths: Sequence[Path], config: PezConfig, options: CaptionOptions, *,
                   progress: Progress | None = None, step_callback: Callback | None = None) -> CaptionSummary:
    """Caption every sample of every shard (see the module's docstring); a shard already written is skipped."""
    import dataclasses
    config = dataclasses.replace(config, batch_invariant=True)
    shards, todo = plan_shards(paths, options)
    summary = CaptionSummary(manifest=options.manifest)
    started = time.perf_counter()
    for shard in shards:
        if shard not in todo:
            continue
        rows = caption_shard(model, shard, config, options, step_callback)
        summary.total += len(rows)
        record(rows, options, summary)
        summary.seconds = time.perf_counter() - started
        if progress is not None:
            progress(progress_of(summary, rows))
    log.info("%d of %d shards captioned (%d skipped as done): %s", len(todo), len(shards),
             len(shards) - len(todo), summary)
    return summary


def caption_shard(model: AnyModel, shard: Path, config: PezConfig, options: CaptionOptions,
                  step_callback: Callback | None = None) -> list[dict]:
    """Caption one shard in batches and write its output shard; a manifest row per sample."""
    from ..clip import tasks
    members, samples = _read(shard)
    rows, captions = [], {}
    usable = []
    for key, image_name in samples:
        where = f"{shard}#{key}"
        try:
            usable.append((key, where, _decode(members[image_name], where)))
        except PezError as e:
            rows.append({"image": where, "caption_file": str(output_of(shard, options)), "status": "failed",
                         "error": str(e)})
    for first in range(0, len(usable), options.batch_size):
        batch = usable[first:first + options.batch_size]
        results = tasks.invert(model, [picture for _, _, picture in batch], config, callback=step_callback)
        for (key, where, _), result in zip(batch, results):
            captions[key] = options.caption_text(result.prompt, None)
            rows.append({"image": where, "caption_file": str(output_of(shard, options)), "status": "written",
                         "prompt": result.prompt, "caption": captions[key].strip(),
                         "similarity": round(result.similarity, 6), "perplexity": result.perplexity})
    _write(output_of(shard, options), members, captions, options.ext)
    return rows


def _read(shard: Path) -> tuple[dict[str, bytes], list[tuple[str, str]]]:
    """Members by name, and (key, image member) per sample in shard order; a sample's key is its member
    names up to the first dot of the file name."""
    try:
        with tarfile.open(shard) as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}
    except (tarfile.TarError, OSError) as e:
        raise PezError(f"cannot read the shard {shard}: {e}") from e
    samples, seen = [], set()
    for name in members:
        folder, _, base = name.rpartition("/")
        key = f"{folder}/{base.split('.', 1)[0]}" if folder else base.split(".", 1)[0]
        if key not in seen and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
            seen.add(key)
            samples.append((key, name))
    return members, samples


def _decode(data: bytes, where: str):
    with tempfile.NamedTemporaryFile(suffix=".img") as f:  # open_image reads files: one error path for both
        f.write(data)
        f.flush()
        try:
            return open_image(Path(f.name))
        except PezError as e:
            raise PezError(str(e).replace(f.name, where)) from e


def _write(path: Path, members: dict[str, bytes], captions: dict[str, str], ext: str) -> None:
    """The input's members with each caption added (or replaced), as one tar written whole."""
    files = dict(members)
    for key, text in captions.items():
        files[key + ext] = text.encode("utf-8")
    with atomic_file(path) as raw, tarfile.open(fileobj=raw, mode="w") as tar:
        for name in sorted(files, key=lambda n: (n.split(".", 1)[0], n)):  # a sample's members together
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(files[name]), 0, 0o644
            tar.addfile(info, io.BytesIO(files[name]))
