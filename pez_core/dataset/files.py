"""The files of a caption job: which images, where each caption goes, and writing it safely.

A caption is written to a temporary file beside its destination and renamed into place, so a reader (or a
crash) never sees half of one. While an image is being captioned its run holds a lock on it (``flock``, which
the system releases when a process dies), so two runs on one folder never caption an image twice.
"""
from __future__ import annotations

import contextlib
import errno
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Sequence

from ..common.errors import PezError

try:
    import fcntl
except ImportError:  # Windows: no locks; one run per folder at a time
    fcntl = None

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff")
LOCK_SUFFIX = ".pez-lock"


@dataclass(frozen=True)
class ImageFile:
    path: Path        # the image
    name: str         # its path relative to the folder it was found in (the given path for a file)
    caption: Path     # where its caption goes


def find_images(paths: Sequence[Path], recursive: bool, ext: str, out: Path | None) -> list[ImageFile]:
    """Images under ``paths`` (folders, or image files), sorted, each with its caption path: ``<stem><ext>``
    beside it, or under ``out`` at the same relative place. Non-image files and hidden names are skipped."""
    found = []
    for root in map(Path, paths):
        if root.is_dir():
            pattern = root.rglob("*") if recursive else root.iterdir()
            for path in sorted(pattern):
                name = path.relative_to(root)
                if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file() \
                        and not any(part.startswith(".") for part in name.parts):
                    found.append(_image_file(path, name.as_posix(), root, ext, out))
        elif root.is_file():
            found.append(_image_file(root, root.name, root.parent, ext, out))
        else:
            raise PezError(f"input not found: {root} (give image folders or image files)")
    return found


def _image_file(path: Path, name: str, root: Path, ext: str, out: Path | None) -> ImageFile:
    caption = (out / name if out is not None else root / name)
    return ImageFile(path, name, caption.with_suffix(ext))


def check_writable(folders: Sequence[Path]) -> None:
    """Refuse, before any work, a caption folder that cannot be created or written (naming it)."""
    for folder in dict.fromkeys(folders):
        try:
            folder.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=folder, prefix=".pez-write-check-"):
                pass
        except OSError as e:
            raise PezError(f"cannot write captions to {folder}: {e.strerror or e}; choose another --out "
                           "folder or fix its permissions") from e


def write_atomically(path: Path, text: str) -> None:
    """``text`` into ``path`` through a temporary file and a rename: the file is whole or absent."""
    with atomic_file(path) as f:
        f.write(text.encode("utf-8"))


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator:
    """A binary file that becomes ``path`` (synced, then renamed into place) only when the block ends well."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


@contextlib.contextmanager
def claimed(images: Sequence[ImageFile]) -> Iterator[list[ImageFile]]:
    """The images no other run is captioning now, each locked until the block ends."""
    held, mine = [], []
    try:
        for image in images:
            lock = _try_lock(image.caption.with_name(f".{image.caption.name}{LOCK_SUFFIX}"))
            if lock is not None:
                held.append(lock)
                mine.append(image)
        yield mine
    finally:
        for path, fd in held:
            with contextlib.suppress(OSError):
                os.unlink(path)
            os.close(fd)


def _try_lock(path: Path) -> tuple[Path, int] | None:
    if fcntl is None:
        return path, os.open(os.devnull, os.O_RDONLY)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        os.close(fd)
        if e.errno in (errno.EAGAIN, errno.EACCES):
            return None
        raise
    return path, fd
