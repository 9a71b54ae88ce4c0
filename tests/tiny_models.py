"""Tiny random-weight CLIPs written by the tests: the real loading path, a few hundred thousand weights."""
from __future__ import annotations

import json
from pathlib import Path

import torch

TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    # the full CLIP BPE vocabulary and context, so PEZ searches the real token space
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}


def write_tiny_checkpoint(folder: Path, name: str = "pez-tiny", seed: int = 0) -> Path:
    """Write ``name.safetensors`` + ``name.json`` (open_clip config) and return the weights path."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    torch.manual_seed(seed)
    model = CLIP(**TINY_CONFIG)
    folder.mkdir(parents=True, exist_ok=True)
    weights = folder / f"{name}.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(weights))
    (folder / f"{name}.json").write_text(json.dumps(TINY_CONFIG))
    return weights
