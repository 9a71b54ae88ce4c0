"""Pretrained weights from the Hugging Face Hub: sized before they start, watched, cancellable, fast to fail.

The hub's own client retries for most of a minute without network and cannot be interrupted, so the
work runs in a helper thread while the caller's thread waits in short slices: it reports progress
(``Watcher``), asks ``limits.check_interrupt`` (Cancel), and gives up after ``CONNECT_TIMEOUT_S``
without an answer or ``STALL_TIMEOUT_S`` without a byte. A cancelled download stops at its next chunk
(the hub keeps the partial file and resumes it next time).
"""
from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Protocol

from ..common.errors import MissingFile, PezError, WeightsNotAvailableError
from ..common.limits import check_interrupt

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 8.0   # the size query: no answer by then means no usable network
STALL_TIMEOUT_S = 60.0    # a download that receives nothing for this long has failed
POLL_S = 0.1              # how often the waiting thread reports progress and checks for Cancel


class Watcher(Protocol):
    """Told about a download: ``announce`` once before it starts, ``progress`` while it runs."""

    def announce(self, text: str) -> None: ...

    def progress(self, done: int, total: int) -> None: ...


class DownloadCancelled(PezError):
    """Raised inside the helper thread to stop the transfer after the caller gave up or cancelled."""


@dataclass
class _Transfer:
    """What the helper thread shares with the waiting one."""
    done: int = 0
    total: int = 0
    last_byte_at: float = field(default_factory=time.monotonic)
    cancel: threading.Event = field(default_factory=threading.Event)


OFFLINE_RETRY = "unset HF_HUB_OFFLINE: presets then download into the Hugging Face cache by themselves"


def missing_weights(reason: str, files: list[MissingFile], retry: str) -> WeightsNotAvailableError:
    """The error for weights that are not here, worded for Python and the CLI (the nodes reword its parts)."""
    where = "; ".join(f"{f.what}: {f.url}" + (f" ({size_text(f.size)})" if f.size else "") for f in files)
    own_copy = ("pass the file's path as pretrained (load_model's argument, the CLI's --pretrained)" if len(files) == 1
                else "load each part with load_model(<arch>, <its file>) and join them with combine() (the CLI: "
                     "a --model and a --pretrained per part)")
    return WeightsNotAvailableError(f"{reason}. Get {where}; then either {retry}, or {own_copy}.",
                                    files, reason, retry)


def file_url(repo_id: str, filename: str) -> str:
    from huggingface_hub import hf_hub_url

    return hf_hub_url(repo_id, filename)


def hub_weights(repo_id: str, filenames: list[str], *, file: MissingFile, watcher: Watcher | None = None) -> Path:
    """Download the first of ``filenames`` the repo has (``file``: what they are, for the messages); a clear,
    prompt error naming the file to get if not."""
    try:
        filename, size = _first_available(repo_id, filenames)
    except DownloadCancelled:
        raise
    except PezError as e:
        raise _failure(file, repo_id, filenames[0], str(e)) from None
    text = (f"downloading the weights of {file.what} ({filename}, {size_text(size)}) from "
            f"{file_url(repo_id, filename)} into the Hugging Face cache; only this once")
    log.info(text)
    if watcher is not None:
        watcher.announce(text)
    try:
        return Path(_wait(lambda t: _download(repo_id, filename, t), watcher, STALL_TIMEOUT_S, total=size))
    except DownloadCancelled:
        raise
    except PezError as e:
        raise _failure(file, repo_id, filename, str(e), size) from None


def size_text(size: int) -> str:
    """``605.0 MB``, ``1.71 GB``."""
    return f"{size / 1e9:.2f} GB" if size >= 1e9 else f"{size / 1e6:.1f} MB"


def _failure(file: MissingFile, repo_id: str, filename: str, why: str, size: int = 0) -> WeightsNotAvailableError:
    """``file`` as the failed attempt left it: the URL tried, that file's suffix and, once known, its size."""
    suffix = Path(filename).suffix or ".safetensors"
    tried = replace(file, url=file_url(repo_id, filename), size=size or file.size,
                    file_name=str(Path(file.file_name).with_suffix(suffix)))
    return missing_weights(f"could not download the weights of {file.what} ({why})", [tried], "try again")


def _first_available(repo_id: str, filenames: list[str]) -> tuple[str, int]:
    """(file name, size in bytes) of the first file the repo has; one quick query each."""
    from huggingface_hub.errors import EntryNotFoundError

    for filename in filenames:
        try:
            size = _wait(lambda t, f=filename: _size(repo_id, f), None, CONNECT_TIMEOUT_S)
        except PezError as e:
            if isinstance(e.__cause__, EntryNotFoundError) and filename != filenames[-1]:
                continue
            raise
        return filename, size
    raise PezError(f"none of {', '.join(filenames)} is in the repo")


def _size(repo_id: str, filename: str) -> int:
    from huggingface_hub import get_hf_file_metadata

    return int(get_hf_file_metadata(file_url(repo_id, filename), timeout=CONNECT_TIMEOUT_S).size or 0)


def _download(repo_id: str, filename: str, transfer: _Transfer) -> str:
    from huggingface_hub import hf_hub_download

    return hf_hub_download(repo_id, filename, tqdm_class=_progress_class(transfer))


def _progress_class(transfer: _Transfer) -> type:
    """A tqdm the hub's client drives: it counts bytes for the waiting thread and stops the transfer once
    the waiting thread has gone (Cancel, timeout). Its own bar stays hidden."""
    from tqdm.auto import tqdm

    class Progress(tqdm):
        def __init__(self, *args: Any, **kwargs: Any):
            kwargs.pop("name", None)
            super().__init__(*args, **{**kwargs, "disable": True})
            transfer.total = int(kwargs.get("total") or transfer.total)
            transfer.done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            if transfer.cancel.is_set():
                raise DownloadCancelled("the download was cancelled")
            transfer.done += int(n or 0)
            transfer.last_byte_at = time.monotonic()
            return super().update(n)

    return Progress


def _wait(work: Callable[[_Transfer], Any], watcher: Watcher | None, silence_s: float, total: int = 0) -> Any:
    """Run ``work`` in a helper thread; wait in slices (progress, Cancel, silence limit). Its result, or a
    PezError (cause: the original exception) when it failed or went silent for ``silence_s``."""
    transfer, outcome = _Transfer(total=total), {}

    def target() -> None:
        try:
            outcome["value"] = work(transfer)
        except BaseException as e:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = e

    thread = threading.Thread(target=target, name="pez-download", daemon=True)
    thread.start()
    try:
        while thread.is_alive():
            thread.join(POLL_S)
            check_interrupt()
            if watcher is not None and transfer.total:
                watcher.progress(transfer.done, transfer.total)
            if thread.is_alive() and time.monotonic() - transfer.last_byte_at > silence_s:
                raise PezError(f"no answer from the Hugging Face Hub for {silence_s:.0f} s")
    except BaseException:
        transfer.cancel.set()  # the helper stops at its next chunk
        raise
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, DownloadCancelled):
            raise error
        raise PezError(f"{type(error).__name__}: {str(error).splitlines()[0] if str(error) else ''}") from error
    return outcome["value"]
