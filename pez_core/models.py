"""Loading OpenCLIP models for PEZ, and the text/image encoders the engine needs.

``load_model`` accepts a preset (``"ViT-L-14 · openai"``), a bundled model
(``"shapes-demo"``), an open_clip architecture with a pretrained tag, a file
path or ``"none"`` (random weights), or a checkpoint path on its own. Loaded
models are cached per (model, weights, device, precision).
"""
from __future__ import annotations

import json
import logging
import os
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .errors import ModelLoadError, PezError, WeightsNotAvailableError
from .images import preprocess

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_PROMPT_TOKENS = 75  # CLIP's 77 positions minus start and end of text
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_BATCH = 256  # texts encoded at once: scoring thousands of candidate prompts stays within memory


@dataclass(frozen=True)
class Preset:
    arch: str
    pretrained: str
    serves: str


PRESETS: dict[str, Preset] = {
    "ViT-L-14 · openai": Preset("ViT-L-14", "openai", "SD 1.x, SDXL's CLIP-L, Flux"),
    "ViT-H-14 · laion2b_s32b_b79k": Preset("ViT-H-14", "laion2b_s32b_b79k", "SD 2.x"),
    "ViT-bigG-14 · laion2b_s39b_b160k": Preset("ViT-bigG-14", "laion2b_s39b_b160k", "SDXL's G encoder"),
    "ViT-B-32 · laion2b_s34b_b79k": Preset("ViT-B-32", "laion2b_s34b_b79k", "fast, for drafts"),
}
DEFAULT_MODEL = "ViT-L-14 · openai"


@dataclass(frozen=True)
class JointPreset:
    """Presets optimised for at once (``pez_core.joint``): one prompt for every text encoder of a pipeline."""
    parts: tuple[str, ...]          # names in PRESETS
    weights: tuple[float, ...]
    serves: str


JOINT_PRESETS: dict[str, JointPreset] = {
    "SDXL (ViT-L-14 · openai + ViT-bigG-14 · laion2b_s39b_b160k)": JointPreset(
        ("ViT-L-14 · openai", "ViT-bigG-14 · laion2b_s39b_b160k"), (1.0, 1.0),
        "SDXL's two encoders (also SD3's two CLIPs)"),
}
BUNDLED_DESCRIPTIONS = {
    "shapes-demo": "demo model trained here; it only knows coloured shapes (works offline)",
}


def bundled_models() -> dict[str, Path]:
    """Bundled model name → weights file (config JSON beside it)."""
    return {name: BUNDLED_DIR / f"{name}.safetensors" for name in BUNDLED_DESCRIPTIONS
            if (BUNDLED_DIR / f"{name}.safetensors").is_file()}


def available_models() -> list[tuple[str, str]]:
    """(usable name, description) for the presets and bundled models."""
    rows = [(name, f"{p.serves}; downloads on first use") for name, p in PRESETS.items()]
    rows += [(name, f"{p.serves}; downloads on first use") for name, p in JOINT_PRESETS.items()]
    rows += [(name, BUNDLED_DESCRIPTIONS[name]) for name in bundled_models()]
    return rows


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except RuntimeError as e:
        raise PezError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise PezError("device 'cuda' was asked for but no CUDA GPU is available; use device auto or cpu")
    return device


def resolve_dtype(precision: str, device: torch.device) -> torch.dtype:
    if precision not in PRECISIONS:
        raise PezError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "auto":
        if device.type != "cuda":
            return torch.float32
        # bf16 needs Ampere or newer; torch also reports True for older GPUs, where it is only emulated (slow)
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else torch.float16
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


@lru_cache(maxsize=None)
def clip_tokenizer(context_length: int = 77):
    from open_clip.tokenizer import SimpleTokenizer
    return SimpleTokenizer(context_length=context_length)


class PezModel:
    """A frozen CLIP with the few operations PEZ needs.

    The text tower runs on ``device`` in ``dtype``; the vision tower is only used
    to compute target features and waits on the CPU between uses on a GPU.
    """

    def __init__(self, clip, name: str, device: torch.device, dtype: torch.dtype):
        if getattr(clip, "text_pool_type", "argmax") != "argmax" or getattr(clip, "attn_mask", None) is None:
            raise ModelLoadError(f"{name}: PEZ needs a causal CLIP text tower pooled at the end-of-text token")
        self.clip = clip.eval().requires_grad_(False)
        self.name, self.device, self.dtype = name, device, dtype
        self.context_length = clip.positional_embedding.shape[0]
        self.tokenizer = clip_tokenizer(self.context_length)
        vocab_rows = clip.token_embedding.weight.shape[0]
        if vocab_rows != len(self.tokenizer.decoder):
            raise ModelLoadError(f"{name}: its text tower has {vocab_rows} token rows, but the CLIP BPE "
                                 f"tokenizer has {len(self.tokenizer.decoder)}; only CLIP-BPE models are supported")
        self.sot_id, self.eot_id = self.tokenizer.sot_token_id, self.tokenizer.eot_token_id
        cfg = clip.visual.preprocess_cfg if hasattr(clip.visual, "preprocess_cfg") else {}
        size = cfg.get("size", getattr(clip.visual, "image_size", 224))
        self.image_size = size if isinstance(size, int) else size[0]
        self.image_mean = tuple(cfg.get("mean", getattr(clip.visual, "image_mean", None) or OPENAI_DATASET_MEAN))
        self.image_std = tuple(cfg.get("std", getattr(clip.visual, "image_std", None) or OPENAI_DATASET_STD))
        clip.to(dtype)
        self._place_text_tower(device)
        self._vision_device = torch.device("cpu") if device.type == "cuda" else device
        clip.visual.to(self._vision_device)

    def _place_text_tower(self, device: torch.device) -> None:
        clip = self.clip
        clip.transformer.to(device), clip.token_embedding.to(device), clip.ln_final.to(device)
        clip.positional_embedding.data = clip.positional_embedding.data.to(device)
        clip.attn_mask = clip.attn_mask.to(device)
        if isinstance(clip.text_projection, torch.nn.Parameter):
            clip.text_projection.data = clip.text_projection.data.to(device)
        elif clip.text_projection is not None:
            clip.text_projection.to(device)
        self._text_device = device

    def offload(self, device: str | torch.device = "cpu") -> None:
        """Park the text tower on ``device`` (frees the GPU between runs); the next use moves it back."""
        device = torch.device(device)
        if device != self._text_device:
            self._place_text_tower(device)
            log.debug("%s: text tower parked on %s", self.name, device)

    def __repr__(self) -> str:
        return f"PezModel({self.name!r}, device={self.device}, dtype={self.dtype})"

    @property
    def token_embeddings(self) -> torch.Tensor:
        """The token table, on ``device``; every text path starts here, so it brings back an offloaded tower."""
        if self._text_device != self.device:
            self._place_text_tower(self.device)
        return self.clip.token_embedding.weight

    @property
    def text_width(self) -> int:
        return self.clip.token_embedding.weight.shape[1]

    @property
    def text_layers(self) -> int:
        return len(self.clip.transformer.resblocks)

    # --- text -----------------------------------------------------------------
    def encode_embeddings(self, prompt: torch.Tensor) -> torch.Tensor:
        """Normalised text features of ``[SOT] + prompt + [EOT]`` for prompt embeddings (B, L, d).

        Attention is causal and the feature is read at EOT, so the sequence is cut right after
        EOT (L+2 positions instead of 77): exactly ``encode_text`` on the padded ids, for less work.
        """
        clip, n = self.clip, prompt.shape[1] + 2
        table = self.token_embeddings
        sot = table[self.sot_id].expand(prompt.shape[0], 1, -1)
        eot = table[self.eot_id].expand(prompt.shape[0], 1, -1)
        x = torch.cat([sot, prompt.to(table.dtype), eot], dim=1) + clip.positional_embedding[:n]
        x = clip.transformer(x, attn_mask=clip.attn_mask[:n, :n])
        x = clip.ln_final(x[:, -1])
        proj = clip.text_projection
        x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised features of prompts given as token ids (B, L), without SOT/EOT."""
        return self.encode_embeddings(self.token_embeddings[ids.to(self.device)])

    def tokenize(self, text: str) -> list[int]:
        """BPE ids of ``text`` without SOT/EOT and without truncation."""
        return self.tokenizer.encode(text)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids]).strip()

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """Normalised features (N, D) of texts.

        A text longer than 75 tokens is not truncated: it is split into 75-token chunks
        and its feature is the normalised mean of the chunks' normalised features.
        """
        chunks, owner = [], []
        for i, text in enumerate(texts):
            ids = self.tokenize(text) if isinstance(text, str) else []
            if not ids:
                raise PezError(f"text {i + 1} is empty (or only whitespace); give it some words")
            for start in range(0, len(ids), MAX_PROMPT_TOKENS):
                chunks.append(ids[start:start + MAX_PROMPT_TOKENS])
                owner.append(i)
        by_length: dict[int, list[int]] = {}
        for j, chunk in enumerate(chunks):
            by_length.setdefault(len(chunk), []).append(j)  # one batch per length: no padding needed
        feats: list = [None] * len(chunks)
        for same_length in by_length.values():
            for idx in _batched(same_length, TEXT_BATCH):
                for j, feat in zip(idx, self.encode_ids(torch.tensor([chunks[j] for j in idx]))):
                    feats[j] = feat
        owner_t = torch.tensor(owner, device=self.device)
        summed = torch.zeros(len(texts), feats[0].shape[0], device=self.device).index_add_(0, owner_t, torch.stack(feats))
        return F.normalize(summed, dim=-1)

    # --- images ---------------------------------------------------------------
    def encode_images(self, images) -> torch.Tensor:
        """Normalised image features (N, D) for a list or batch of images (see ``pez_core.images``)."""
        pixels = preprocess(images, self.image_size, self.image_mean, self.image_std)
        visual = self.clip.visual.to(self.device)
        try:
            feats = [visual(batch.to(self.device, self.dtype)) for batch in pixels.split(32)]
        finally:
            visual.to(self._vision_device)
        return F.normalize(torch.cat(feats).float(), dim=-1)


def _batched(items: list, size: int) -> list[list]:
    return [items[i:i + size] for i in range(0, len(items), size)]


# --- loading ---------------------------------------------------------------------------------------
_CACHE: dict[tuple, PezModel] = {}
_CACHE_LOCK = threading.Lock()


def clear_cache() -> None:
    with _CACHE_LOCK:
        _CACHE.clear()


@dataclass(frozen=True)
class _Source:
    """What to build: an open_clip architecture (or a custom config) and where its weights are."""
    arch: str
    quick_gelu: bool = False        # OpenAI's weights were trained with QuickGELU
    config: dict | None = None      # a custom open_clip model config (a checkpoint's JSON)
    weights: Path | None = None     # None: random weights

    def key(self) -> tuple:
        return self.arch, self.quick_gelu, json.dumps(self.config, sort_keys=True), str(self.weights)


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = None,
               device: str | torch.device = "auto", precision: str = "auto") -> PezModel:
    """Load (or fetch from the cache) a model for PEZ. See the module docstring for ``name``.
    A joint preset (``JOINT_PRESETS``) gives a ``pez_core.joint.JointModel`` of its parts."""
    if isinstance(name, str) and name.strip() in JOINT_PRESETS and pretrained is None:
        from .joint import combine
        preset = JOINT_PRESETS[name.strip()]
        return combine([load_model(part, None, device, precision) for part in preset.parts], preset.weights)
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    source = _resolve(name, pretrained)
    key = (*source.key(), str(device), dtype)
    # weights made under inference_mode (ComfyUI runs nodes so) could never take part in a backward pass
    with _CACHE_LOCK, torch.inference_mode(False):
        if key not in _CACHE:
            _CACHE[key] = PezModel(_build(source), name, device, dtype)
            log.info("loaded %s (%s) on %s as %s", name, source.weights, device, dtype)
        return _CACHE[key]


def _known_names() -> str:
    return ", ".join([*PRESETS, *JOINT_PRESETS, *bundled_models()])


def _resolve(name: str, pretrained: str | None) -> _Source:
    import open_clip

    if not isinstance(name, str) or not name.strip():
        raise PezError(f"no model name given; use one of: {_known_names()}")
    name = name.strip()
    if name in PRESETS and pretrained is None:
        return _pretrained(PRESETS[name].arch, PRESETS[name].pretrained)
    bundled = bundled_models()
    if name in bundled:
        return _from_checkpoint(bundled[name])
    if Path(name).suffix in CHECKPOINT_SUFFIXES or Path(name).is_file():
        if not Path(name).is_file():
            raise ModelLoadError(f"checkpoint {name} does not exist")
        return _from_checkpoint(Path(name))
    if name not in open_clip.list_models():
        raise PezError(f"unknown model {name!r}; use one of: {_known_names()}, a checkpoint path, "
                       "or an open_clip architecture name (open_clip.list_models())")
    tags = open_clip.list_pretrained_tags_by_model(name)
    if pretrained is None:
        pretrained = next((p.pretrained for p in PRESETS.values() if p.arch == name), None)
        if pretrained is None:
            raise PezError(f"model {name} needs pretrained weights: a tag ({', '.join(tags) or 'none known'}), "
                           "a file path, or 'none' for random weights")
    if pretrained.lower() == "none":
        log.warning("%s with random weights: only for tests and benchmarks, its prompts mean nothing", name)
        return _Source(name)
    if Path(pretrained).is_file():
        return _Source(name, weights=Path(pretrained))
    if pretrained not in tags:
        raise PezError(f"{pretrained!r} is neither a file nor a pretrained tag of {name}; known tags: "
                       f"{', '.join(tags) or 'none'}")
    return _pretrained(name, pretrained)


def _pretrained(arch: str, tag: str) -> _Source:
    from open_clip.pretrained import get_pretrained_cfg

    return _Source(arch, get_pretrained_cfg(arch, tag).get("quick_gelu", False), weights=_tag_weights(arch, tag))


def _from_checkpoint(path: Path) -> _Source:
    """A checkpoint file with its architecture: a config JSON beside it, or a known name prefix."""
    import open_clip

    config_file = path.with_suffix(".json")
    if config_file.is_file():
        try:
            config = json.loads(config_file.read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ModelLoadError(f"cannot read the model config {config_file}: {e}") from e
        if isinstance(config, dict) and "embed_dim" in config:
            return _Source(path.stem, bool(config.get("quick_gelu")), config, path)
        if isinstance(config, dict) and config.get("arch") in open_clip.list_models():
            return _Source(config["arch"], bool(config.get("quick_gelu")), weights=path)
        raise ModelLoadError(f"{config_file} must be an open_clip model config (with embed_dim) "
                             'or name an architecture, e.g. {"arch": "ViT-L-14", "quick_gelu": true}')
    arches = sorted((a for a in open_clip.list_models() if path.stem.startswith(a)), key=len)
    if not arches:
        raise ModelLoadError(f"cannot tell the architecture of {path.name}: start its name with one "
                             f"(e.g. ViT-L-14-openai.safetensors) or put {config_file.name} beside it, "
                             'e.g. {"arch": "ViT-L-14", "quick_gelu": true}')
    arch = arches[-1]
    return _Source(arch, "openai" in path.stem, weights=path)  # OpenAI's weights were trained with QuickGELU


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _tag_weights(arch: str, tag: str) -> Path:
    """Local path of a pretrained tag's weights; downloads when online, a clear error when offline."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    repo_id, filename = (hub.rsplit("/", 1) + [""])[:2] if hub else ("", "")
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if repo_id:
        try:
            from huggingface_hub import try_to_load_from_cache
            for candidate in candidates:
                cached = try_to_load_from_cache(repo_id, candidate)
                if isinstance(cached, str):
                    return Path(cached)
        except ImportError:
            pass
    where = f"the Hugging Face repo {repo_id} ({' or '.join(candidates)})" if repo_id else cfg.get("url", "its URL")
    if _offline():
        raise WeightsNotAvailableError(
            f"the weights of {arch} / {tag} are not on this machine and HF_HUB_OFFLINE is set. "
            f"Get them from {where}, then either unset HF_HUB_OFFLINE to let them download into the "
            f"Hugging Face cache, or save the file as e.g. {arch}-{tag}.safetensors in the models/pez "
            "folder (ComfyUI) or pass its path as pretrained.")
    try:
        return Path(download_pretrained(cfg))
    except Exception as e:  # network errors come in many types
        raise WeightsNotAvailableError(f"could not download the weights of {arch} / {tag} from {where}: {e}") from e


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except Exception as e:  # safetensors and pickle raise many types on damaged files
        raise ModelLoadError(f"the checkpoint {path} is damaged or not a model file ({type(e).__name__}: {e}); "
                             "download it again") from e
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"the checkpoint {path} holds no weights")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _build(source: _Source):
    import open_clip
    from open_clip.model import CLIP

    try:
        if source.config is not None:
            fields = {k: v for k, v in source.config.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
            clip = CLIP(**fields, quick_gelu=source.quick_gelu)
        else:
            clip = open_clip.create_model(source.arch, load_weights=False, force_quick_gelu=source.quick_gelu)
    except Exception as e:
        raise ModelLoadError(f"cannot build the model {source.arch}: {e}") from e
    if source.weights is None:
        return clip
    state = _read_state_dict(source.weights)
    try:
        missing, unexpected = clip.load_state_dict(state, strict=False)
    except RuntimeError as e:
        raise ModelLoadError(f"the checkpoint {source.weights} does not fit {source.arch}: {e}") from e
    missing = [k for k in missing if "attn_mask" not in k]
    if missing:
        raise ModelLoadError(f"the checkpoint {source.weights} does not fit {source.arch}: missing "
                             f"{', '.join(missing[:5])}" + ("…" if len(missing) > 5 else ""))
    if unexpected:
        log.debug("ignored %d unexpected keys in %s", len(unexpected), source.weights)
    return clip
