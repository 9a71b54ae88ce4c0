"""Device memory around a run: make room before, park the text tower where ComfyUI parks its own after."""
from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import comfy.model_management as mm
import torch

from .. import pez_core

GIB = 1 << 30


@contextmanager
def device_session(model: pez_core.PezModel) -> Iterator[None]:
    """Make room on an accelerator before a run (the text tower comes back, the vision tower and
    activations come and go); afterwards park the text tower where ComfyUI parks its text encoders
    (the CPU unless --gpu-only) so the diffusion model gets the memory. Outside inference mode."""
    on_gpu = model.device.type != "cpu"
    if on_gpu:  # a combined model (PEZ Combine Models) needs room for all its CLIPs
        size = sum(mm.module_size(m.clip) for m, _ in pez_core.joint_members(model))
        mm.free_memory(size + GIB, model.device)
    try:
        with torch.inference_mode(False):
            yield
    finally:
        if on_gpu:
            model.offload(mm.text_encoder_offload_device())
            mm.soft_empty_cache()
