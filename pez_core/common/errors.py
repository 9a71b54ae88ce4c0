"""Exceptions a user can act on. All derive from ``ValueError`` so callers may catch either."""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


class PezError(ValueError):
    """Bad input or configuration; the message says what to change."""


class ModelLoadError(PezError):
    """A model could not be built or its weights could not be read."""


@dataclass(frozen=True)
class MissingFile:
    """A weights file that is not on this machine, and where to get it."""
    what: str        # "ViT-L-14 / openai"
    url: str
    file_name: str   # the name to save it under where names matter, e.g. ViT-L-14-openai.safetensors
    size: int = 0    # bytes; 0 when unknown


class WeightsNotAvailableError(ModelLoadError):
    """Weights are not on this machine and were not downloaded (offline, or the download failed).

    The message is worded for Python and the CLI. ``reason``, ``files`` and ``retry`` are its parts, so that
    a host application (the ComfyUI nodes) can say where to put the files in its own words."""

    def __init__(self, message: str, files: Sequence[MissingFile] = (), reason: str = "", retry: str = ""):
        super().__init__(message)
        self.files, self.reason, self.retry = tuple(files), reason or message, retry
