"""What the tests share: tiny random-weight CLIPs (and variants of other widths), test images, node names,
planted problems, the engine's run and a string's gain for a CLIP objective, the cancel a test raises.

``tests/support`` is on ``sys.path`` (see ``tests/conftest.py``), so tests import this as ``helpers``.
"""
from __future__ import annotations

import copy
import io
import json
from pathlib import Path

import torch

from paths import REPO_ROOT

TINY_MODEL = "pez-tiny.safetensors"
TINY_CONFIG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 16, "head_width": 16},
    # the full CLIP BPE vocabulary and context, so PEZ searches the real token space
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
}
# node id -> display name: a public contract, never renamed
PEZ_DISPLAY_NAMES = {
    "PEZ_LoadModel": "PEZ Load Model",
    "PEZ_InvertImage": "PEZ Invert Image",
    "PEZ_DistillPrompt": "PEZ Distill Prompt",
    "PEZ_StylePrompt": "Style Prompt from Images",
    "PEZ_ConcatPrompts": "Concat Prompts",
    "PEZ_PromptSimilarity": "PEZ Prompt Similarity",
    "PEZ_CombineModels": "PEZ Combine Models",
    "PEZ_CaptionFolder": "PEZ Caption Folder",
}
DEMO_IMAGE = REPO_ROOT / "assets" / "pez-demo-shape.png"
# name -> (size, mode, background, shape colour, shape): RGB and RGBA PNGs of different sizes
TEST_IMAGES = {
    "pez_red_circle.png": ((64, 64), "RGB", "white", "red", "ellipse"),
    "pez_blue_square.png": ((80, 48), "RGB", "white", "blue", "rectangle"),
    "pez_green_rgba.png": ((40, 40), "RGBA", (0, 0, 0, 0), "green", "ellipse"),
}


class Cancelled(Exception):
    """What a test's cancel hook raises, as ComfyUI's interrupt does."""


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


def write_variant(folder, name: str, width: int, embed_dim: int, seed: int) -> str:
    """A tiny random CLIP like ``write_tiny_checkpoint``'s, with its own text width and feature size."""
    from open_clip.model import CLIP
    from safetensors.torch import save_file

    config = copy.deepcopy(TINY_CONFIG)
    config["embed_dim"], config["text_cfg"]["width"] = embed_dim, width
    torch.manual_seed(seed)
    model = CLIP(**config)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(folder / f"{name}.safetensors"))
    (folder / f"{name}.json").write_text(json.dumps(config))
    return str(folder / f"{name}.safetensors")


def png_bytes(size: tuple[int, int], mode: str, background: object, colour: str, shape: str) -> bytes:
    from PIL import Image, ImageDraw

    image = Image.new(mode, size, background)  # type: ignore[arg-type]
    w, h = size
    getattr(ImageDraw.Draw(image), shape)((w // 5, h // 5, w - w // 5, h - h // 5), fill=colour)
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def padded(model, ids: torch.Tensor) -> torch.Tensor:
    """The 77-token template open_clip's ``encode_text`` expects: SOT, the ids, EOT, zero padding."""
    full = torch.zeros(ids.shape[0], model.context_length, dtype=torch.long, device=ids.device)
    full[:, 0], full[:, 1:ids.shape[1] + 1], full[:, ids.shape[1] + 1] = model.sot_id, ids, model.eot_id
    return full


def encode_text_reference(model, ids: torch.Tensor) -> torch.Tensor:
    """open_clip's own ``encode_text`` on the padded template, normalised: what the engine must equal."""
    with torch.no_grad():
        return torch.nn.functional.normalize(model.clip.encode_text(padded(model, ids)), dim=-1)


def planted_problem(model, length: int, seed: int):
    """A target made by a random prompt of whole words, and the best of 400 random prompts against it."""
    import pez_core

    allowed = pez_core.allowed_token_ids(model.tokenizer, "words")
    generator = torch.Generator().manual_seed(seed)
    planted = allowed[torch.randint(len(allowed), (1, length), generator=generator)]
    with torch.no_grad():
        target = model.encode_ids(planted)[0]
    random_prompts = allowed[torch.randint(len(allowed), (400, length), generator=generator)]
    with torch.no_grad():
        random_best = float((model.encode_ids(random_prompts) @ target).max())
    return pez_core.Objective.stack([[(target, 1.0)]]), random_best


def string_gain(model, objective, text: str) -> float:
    """The gain a CLIP objective gives a prompt string (as it re-tokenizes): what polishing compares."""
    import pez_core

    scorer = pez_core.ClipScorer(model, objective)
    return float(scorer.score_texts([text], torch.tensor([0]))[0][0])


def clip_run(model, objective, config):
    """The engine's run object for a CLIP objective, to drive step by step."""
    import pez_core
    from pez_core.engine import loop as engine

    return engine.Run(pez_core.ClipScorer(model, objective, config.vocab, config.blocklist, config.allowlist), config)


def kept_for_backward(model, prompt_len: int, restarts: int = 4) -> float:
    """Elements autograd keeps for one step's backward, per prompt, position, text width and layer."""
    import pez_core

    weights = {t.untyped_storage().data_ptr() for t in [*model.clip.parameters(), *model.clip.buffers()]}
    target = model.encode_texts(["a red circle"])[0]
    run = clip_run(model, pez_core.Objective.stack([[(target, 1.0)]]),
                   pez_core.PezConfig(restarts=restarts, prompt_len=prompt_len))
    kept: dict[int, int] = {}

    def keep(t):
        if t.untyped_storage().data_ptr() not in weights:
            kept[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t
    with torch.enable_grad(), torch.autograd.graph.saved_tensors_hooks(keep, lambda t: t):
        run.step()
    return sum(kept.values()) / restarts / (prompt_len + 2) / model.text_width / model.text_layers / model.dtype.itemsize
