"""Where a run happens: the device, its free memory, and whether Hugging Face may be asked for files."""
from __future__ import annotations

import os

import torch

from .errors import PezError


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise PezError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PezError(f"device {str(device)!r} was asked for but no CUDA GPU is available; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PezError(f"device {str(device)!r} was asked for but this machine has {torch.cuda.device_count()} "
                       "CUDA GPU(s), numbered from 0; use device auto, cuda or cpu")
    return device



def free_memory(device: torch.device) -> int:
    """Bytes free on ``device`` now (RAM for the CPU; 4 GiB where it cannot be told)."""
    if device.type == "cuda":  # what the driver has free plus what torch's cache holds unused
        return torch.cuda.mem_get_info(device)[0] + torch.cuda.memory_reserved(device) - torch.cuda.memory_allocated(device)
    try:
        import psutil
        return psutil.virtual_memory().available
    except ImportError:
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            return 4 << 30


def hub_offline() -> bool:
    """Whether ``HF_HUB_OFFLINE`` forbids downloads, read as huggingface_hub reads it (1, true, yes, on)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
