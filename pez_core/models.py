"""Loading OpenCLIP models for PEZ, and the text/image encoders the engine needs.

``load_model`` accepts a preset (``"ViT-L-14 · openai"``), a bundled model
(``"shapes-demo"``), an open_clip architecture with a pretrained tag, a file
path or ``"none"`` (random weights), or a checkpoint path on its own. The few most
recently loaded models are cached per (model, weights file and its size and mtime, device, precision).

A checkpoint is checked before it costs anything: its config's numbers, its tensors' shapes against
the architecture (built on the meta device, no memory) and the memory the model needs.
"""
from __future__ import annotations

import ctypes
import json
import logging
import os
import pickle
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from open_clip.constants import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD

from .download import Watcher, hub_weights, save_hint
from .errors import ModelLoadError, PezError, WeightsNotAvailableError
from .images import preprocess
from .limits import check_interrupt
from .vocab import ClipTokenizer

log = logging.getLogger(__name__)

BUNDLED_DIR = Path(__file__).parent / "bundled"
CHECKPOINT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".ckpt")
MAX_PROMPT_TOKENS = 75  # CLIP's 77 positions minus start and end of text
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
TEXT_BATCH = 256  # texts encoded at once: scoring thousands of candidate prompts stays within memory
# images encoded at once; fewer on the CPU, where Cancel is checked between them (8 encode as fast as 32
# there: random ViT-B-32, 1 thread, 111 against 110 ms an image)
IMAGE_BATCH, CPU_IMAGE_BATCH = 32, 8
SHARED_STARTS = True  # texts sharing leading tokens run only their tails (False: the whole tower, to compare)
# models kept loaded: two cover a workflow that alternates two CLIPs (e.g. SDXL's L and G encoders);
# every further one would hold 0.6-10 GB of RAM that nothing uses
MAX_CACHED_MODELS = 2
MAX_CONFIG_BYTES = 1 << 20  # an open_clip config is a few KB; a bigger "config" is another file
MAX_CONFIG_DEPTH = 8  # open_clip nests 3 deep (e.g. vision_cfg.timm_kwargs)
CONFIG_LIMITS = {"embed_dim": 8192, "width": 8192, "layers": 96, "heads": 128, "head_width": 1024,
                 "patch_size": 1024, "image_size": 4096, "mlp_ratio": 16}  # well above ViT-bigG's


@dataclass(frozen=True)
class Preset:
    arch: str
    pretrained: str
    serves: str

    @property
    def file_stem(self) -> str:
        """The name its weights go by in a model folder (what the offline error and the examples ask for)."""
        return f"{self.arch}-{self.pretrained}"


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


def preset_of_file(filename: str) -> str | None:
    """The preset whose weights file this is (``ViT-L-14-openai.safetensors`` → ``ViT-L-14 · openai``), or None."""
    path = Path(filename)
    if path.suffix.lower() not in CHECKPOINT_SUFFIXES:
        return None
    return next((name for name, p in PRESETS.items() if p.file_stem == path.stem), None)


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
        raise PezError(f"device {str(device)!r} was asked for but no CUDA GPU is available; use device auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise PezError(f"device {str(device)!r} was asked for but this machine has {torch.cuda.device_count()} "
                       "CUDA GPU(s), numbered from 0; use device auto, cuda or cpu")
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
def clip_tokenizer(context_length: int = 77) -> ClipTokenizer:
    return ClipTokenizer(context_length=context_length)


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
        return self._feature(x[:, -1])

    def encode_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """Normalised features of prompts given as token ids (B, L), without SOT/EOT."""
        return self.encode_embeddings(self.token_embeddings[ids.to(self.device)])

    def tokenize(self, text: str, name: str = "the text") -> list[int]:
        """BPE ids of ``text`` without SOT/EOT and without truncation (texts are bounded: ``pez_core.limits``)."""
        return self.tokenizer.encode(text, name)

    def decode(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode([int(i) for i in ids]).strip()

    def encode_texts(self, texts: Sequence[str], name: str = "text") -> torch.Tensor:
        """Normalised features (N, D) of texts; errors call them ``name`` (e.g. "negative text").

        A text longer than 75 tokens is not truncated: it is split into 75-token chunks
        and its feature is the normalised mean of the chunks' normalised features.
        """
        chunks, owner = [], []
        for i, text in enumerate(texts):
            label = f"{name} {i + 1}" if len(texts) > 1 else name
            ids = self.tokenize(text, label) if isinstance(text, str) else []
            if not ids:
                raise PezError(f"{label} is empty (or only whitespace or characters CLIP drops); give it some words")
            for start in range(0, len(ids), MAX_PROMPT_TOKENS):
                chunks.append(ids[start:start + MAX_PROMPT_TOKENS])
                owner.append(i)
        by_length: dict[int, list[int]] = {}
        for j, chunk in enumerate(chunks):
            by_length.setdefault(len(chunk), []).append(j)  # one batch per length: no padding needed
        feats: list = [None] * len(chunks)
        for same_length in by_length.values():
            for j, feat in zip(same_length, self._encode_same_length(torch.tensor([chunks[j] for j in same_length]))):
                feats[j] = feat
        owner_t = torch.tensor(owner, device=self.device)
        summed = torch.zeros(len(texts), feats[0].shape[0], device=self.device).index_add_(0, owner_t, torch.stack(feats))
        return F.normalize(summed, dim=-1)

    @torch.no_grad()
    def _encode_same_length(self, ids: torch.Tensor) -> torch.Tensor:
        """Features (N, D) of N prompts of one length (N, L), in batches of at most ``TEXT_BATCH``.

        Candidate prompts mostly differ from one prompt in a token or two. The *consensus* holds the most
        common token at each position; attention is causal, so the tokens a row shares with the consensus
        from its start have the same states in every such row. Those are computed once, and each batch
        runs only its rows' tails through the tower (``_encode_tails``).
        """
        ids = ids.cpu()  # the grouping is bookkeeping (and torch.mode is not on every backend)
        if not (SHARED_STARTS and self._tails_supported):
            feats = []
            for first in range(0, len(ids), TEXT_BATCH):
                check_interrupt()  # a long text is many batches: Cancel is seen between them
                feats.append(self.encode_ids(ids[first:first + TEXT_BATCH]))
            return torch.cat(feats)
        consensus = ids.mode(dim=0).values
        shared = (ids == consensus).int().cumprod(dim=1).sum(dim=1).tolist()  # leading tokens shared with it
        starts = self._prefix_states(consensus[:max(shared)].to(self.device))
        order = sorted(range(len(shared)), key=lambda r: -shared[r])  # a batch runs from its shortest start
        feats: list = [None] * len(order)
        for first in range(0, len(order), TEXT_BATCH):
            check_interrupt()
            rows = order[first:first + TEXT_BATCH]
            done = self._encode_tails(ids[torch.tensor(rows)].to(self.device), min(shared[r] for r in rows), starts)
            for r, feat in zip(rows, done):
                feats[r] = feat
        return torch.stack(feats)

    @property
    def _tails_supported(self) -> bool:
        """Whether the tower is made of open_clip's plain self-attention blocks, which ``_encode_tails``
        drives through their own layers (anything else takes the plain forward)."""
        from open_clip.transformer import ResidualAttentionBlock
        tower = self.clip.transformer
        return getattr(tower, "batch_first", False) and all(
            type(block) is ResidualAttentionBlock and not hasattr(block, "ln_1_kv") and block.attn.batch_first
            for block in tower.resblocks)

    def _prefix_states(self, prompt: torch.Tensor) -> list[torch.Tensor]:
        """The input of every block at the positions of ``[SOT] + prompt`` (L,): each (1, L + 1, d)."""
        clip, n = self.clip, prompt.shape[0] + 1
        x = self.token_embeddings[torch.cat([prompt.new_tensor([self.sot_id]), prompt])][None] + clip.positional_embedding[:n]
        states = []
        for block in clip.transformer.resblocks:
            states.append(x)
            x = block(x, attn_mask=clip.attn_mask[:n, :n])
        return states

    def _encode_tails(self, ids: torch.Tensor, shared: int, starts: list[torch.Tensor]) -> torch.Tensor:
        """Normalised features of prompts (B, L) whose first ``shared`` tokens are those of the prompt
        ``starts`` was computed from: only the later positions run through the tower, attending to the
        stored start as well, and the last block computes end-of-text alone (the feature is read there)."""
        clip, table = self.clip, self.token_embeddings
        held, n = shared + 1, ids.shape[1] + 2  # positions taken from ``starts`` (SOT and the shared tokens); all
        tail = torch.cat([ids[:, shared:], ids.new_full((ids.shape[0], 1), self.eot_id)], dim=1)
        x = table[tail] + clip.positional_embedding[held:n]
        blocks = clip.transformer.resblocks
        for i, block in enumerate(blocks):
            normed = block.ln_1(torch.cat([starts[i][:, :held].expand(x.shape[0], -1, -1), x], dim=1))
            query_from = held if i < len(blocks) - 1 else n - 1
            x = x[:, query_from - held:]
            x = x + block.ls_1(block.attention(q_x=normed[:, query_from:], k_x=normed, v_x=normed,
                                               attn_mask=clip.attn_mask[query_from:n, :n]))
            x = x + block.ls_2(block.mlp(block.ln_2(x)))
        return self._feature(x[:, -1])

    def _feature(self, end_of_text: torch.Tensor) -> torch.Tensor:
        """The normalised text feature (B, D) from the tower's output at end-of-text (B, d)."""
        x = self.clip.ln_final(end_of_text)
        proj = self.clip.text_projection
        if proj is not None:  # open_clip's proj_type "none" has no projection
            x = proj(x) if isinstance(proj, torch.nn.Linear) else x @ proj
        return F.normalize(x.float(), dim=-1)

    # --- images ---------------------------------------------------------------
    def encode_images(self, images) -> torch.Tensor:
        """Normalised image features (N, D) for a list or batch of images (see ``pez_core.images``)."""
        pixels = preprocess(images, self.image_size, self.image_mean, self.image_std)
        visual = self.clip.visual.to(self.device)
        # Cancel is seen before every block too: one image takes seconds through ViT-L-14 on a CPU
        hooks = [block.register_forward_pre_hook(lambda *_: check_interrupt()) for block in _blocks(visual)]
        try:
            feats = []
            for batch in pixels.split(IMAGE_BATCH if self.device.type == "cuda" else CPU_IMAGE_BATCH):
                check_interrupt()
                feats.append(visual(batch.to(self.device, self.dtype)))
        finally:
            for hook in hooks:
                hook.remove()
            visual.to(self._vision_device)
        return F.normalize(torch.cat(feats).float(), dim=-1)


def _blocks(visual) -> list[torch.nn.Module]:
    """The blocks of a vision tower: a ViT's residual attention blocks or a ResNet's bottlenecks."""
    blocks = getattr(getattr(visual, "transformer", None), "resblocks", None)
    if blocks is not None:
        return list(blocks)
    return [block for name in ("layer1", "layer2", "layer3", "layer4") for block in getattr(visual, name, [])]


# --- loading ---------------------------------------------------------------------------------------
_CACHE: OrderedDict[tuple, PezModel] = OrderedDict()  # least recently used first
_CACHE_LOCK = threading.Lock()


def clear_cache() -> int:
    """Forget every cached model (their memory returns once no caller holds them); how many there were."""
    with _CACHE_LOCK:
        dropped = list(_CACHE.values())
        _CACHE.clear()
    for model in dropped:
        _forget(model)
    return len(dropped)


def _forget(model: PezModel) -> None:
    """Once a dropped model is collected, hand the freed heap back to the OS: glibc keeps freed pages
    otherwise (measured: RSS stayed 0.35 GB above the start after a ViT-B-32 was freed, until trimmed)."""
    weakref.finalize(model, _trim_heap)


def _trim_heap() -> None:
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def cached_models() -> list[PezModel]:
    with _CACHE_LOCK:
        return list(_CACHE.values())


def _file_identity(path: Path | None) -> tuple:
    """A replaced file (other size or mtime) is another model."""
    if path is None:
        return ()
    try:
        st = path.stat()
    except OSError:
        return (str(path),)
    return str(path), st.st_size, st.st_mtime_ns


@dataclass(frozen=True)
class _Source:
    """What to build: an open_clip architecture (or a custom config) and where its weights are."""
    arch: str
    quick_gelu: bool = False        # OpenAI's weights were trained with QuickGELU
    config: dict | None = None      # a custom open_clip model config (a checkpoint's JSON)
    weights: Path | None = None     # None: random weights

    def key(self) -> tuple:
        config_file = self.weights.with_suffix(".json") if self.weights is not None else None
        return (self.arch, self.quick_gelu, json.dumps(self.config, sort_keys=True), _file_identity(self.weights),
                _file_identity(config_file))


def load_model(name: str = DEFAULT_MODEL, pretrained: str | None = None, device: str | torch.device = "auto",
               precision: str = "auto", watcher: Watcher | None = None) -> PezModel:
    """Load (or fetch from the cache) a model for PEZ. See the module docstring for ``name``;
    ``watcher`` hears about a download of pretrained weights (size first, then progress).
    A joint preset (``JOINT_PRESETS``) gives a ``pez_core.joint.JointModel`` of its parts."""
    if isinstance(name, str) and name.strip() in JOINT_PRESETS and pretrained is None:
        from .joint import combine
        preset = JOINT_PRESETS[name.strip()]
        return combine([load_model(part, None, device, precision, watcher) for part in preset.parts], preset.weights)
    device = resolve_device(device)
    dtype = resolve_dtype(precision, device)
    source = _resolve(name, pretrained, watcher)
    key = (*source.key(), str(device), dtype)
    # weights made under inference_mode (ComfyUI runs nodes so) could never take part in a backward pass
    with _CACHE_LOCK, torch.inference_mode(False):
        if key in _CACHE:
            _CACHE.move_to_end(key)
            return _CACHE[key]
        while len(_CACHE) >= MAX_CACHED_MODELS:  # make room before building: the old one's memory comes back
            _, dropped = _CACHE.popitem(last=False)
            _forget(dropped)
            log.info("model cache: dropped %s (keeping the %d most recent)", dropped, MAX_CACHED_MODELS)
        clip = _build(source)
        check_interrupt()
        _CACHE[key] = PezModel(clip, name, device, dtype)
        log.info("loaded %s (%s) on %s as %s", name, source.weights, device, dtype)
        return _CACHE[key]


def _known_names() -> str:
    return ", ".join([*PRESETS, *JOINT_PRESETS, *bundled_models()])


def _resolve(name: str, pretrained: str | None, watcher: Watcher | None = None) -> _Source:
    import open_clip

    if not isinstance(name, str) or not name.strip():
        raise PezError(f"no model name given; use one of: {_known_names()}")
    name = name.strip()
    if name in PRESETS and pretrained is None:
        return _pretrained(PRESETS[name].arch, PRESETS[name].pretrained, watcher)
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
    return _pretrained(name, pretrained, watcher)


def _pretrained(arch: str, tag: str, watcher: Watcher | None = None) -> _Source:
    from open_clip.pretrained import get_pretrained_cfg

    return _Source(arch, get_pretrained_cfg(arch, tag).get("quick_gelu", False),
                   weights=_tag_weights(arch, tag, watcher))


def _from_checkpoint(path: Path) -> _Source:
    """A checkpoint file with its architecture: a config JSON beside it, or a known name prefix."""
    import open_clip

    config_file = path.with_suffix(".json")
    if config_file.is_file():
        config = _read_config(config_file)
        if isinstance(config, dict) and "embed_dim" in config:
            _check_config(config, config_file)
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


def _read_config(config_file: Path):
    """A checkpoint's JSON config, or a ModelLoadError naming the file and what to do."""
    fix = "it must be an open_clip model config in UTF-8 JSON; replace or remove it"
    try:
        if config_file.stat().st_size > MAX_CONFIG_BYTES:
            raise ModelLoadError(f"the model config {config_file} has {config_file.stat().st_size:,} bytes, more "
                                 f"than the {MAX_CONFIG_BYTES:,} a config can have: {fix}")
        return json.loads(config_file.read_text(encoding="utf-8"))
    except ModelLoadError:
        raise
    except UnicodeDecodeError as e:
        raise ModelLoadError(f"the model config {config_file} is not UTF-8 text (byte {e.start}): {fix}") from None
    except RecursionError:  # json parses nesting recursively: "[[[[..." 200,000 deep
        raise ModelLoadError(f"the model config {config_file} nests too deeply to read: {fix}") from None
    except (OSError, ValueError) as e:  # ValueError: bad JSON, or e.g. an integer of 5,000 digits
        raise ModelLoadError(f"cannot read the model config {config_file}: {e}") from e


def _check_config(config: dict, where: Path) -> None:
    """The numbers of an open_clip config, before anything is built from them."""
    problems = [f"{section} must be an object" for section in ("vision_cfg", "text_cfg")
                if not isinstance(config.get(section), dict)]

    def walk(section: dict, prefix: str, depth: int = 1) -> None:
        if depth > MAX_CONFIG_DEPTH:  # walking on would recurse as deep as the file nests
            problems.append(f"{prefix.rstrip('.')} nests more than {MAX_CONFIG_DEPTH} levels deep")
            return
        for key, value in section.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.", depth + 1)
            elif key in CONFIG_LIMITS and value is not None:  # None: open_clip's default
                values = value if isinstance(value, (list, tuple)) and value else [value]
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and 0 < v <= CONFIG_LIMITS[key]
                           for v in values):
                    problems.append(f"{prefix}{key} is {value!r}, not a number from 1 to {CONFIG_LIMITS[key]}")
    walk(config, "")
    if problems:
        raise ModelLoadError(f"the model config {where} is not usable: {'; '.join(problems[:5])}")


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def _tag_weights(arch: str, tag: str, watcher: Watcher | None = None) -> Path:
    """Local path of a pretrained tag's weights; downloads when online (sized, watched, cancellable),
    a clear error naming the file to save and where when offline or when the download fails."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    hub = cfg.get("hf_hub", "")
    repo_id, filename = (hub.rsplit("/", 1) + [""])[:2] if hub else ("", "")
    # open_clip prefers a safetensors twin of a pickle, and so do we (no code runs when it loads)
    candidates = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
    if repo_id:
        from huggingface_hub import try_to_load_from_cache
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str):
                return Path(cached)
    where = f"the Hugging Face repo {repo_id} ({' or '.join(candidates)})" if repo_id else cfg.get("url", "its URL")
    if _offline():
        raise WeightsNotAvailableError(
            f"the weights of {arch} / {tag} are not on this machine and HF_HUB_OFFLINE is set. "
            f"Get them from {where}, then either unset HF_HUB_OFFLINE to let them download into the "
            f"Hugging Face cache, or {save_hint(arch, tag)}.")
    if repo_id:
        return hub_weights(repo_id, candidates, what=f"the weights of {arch} / {tag}", arch=arch, tag=tag,
                           watcher=watcher)
    try:  # a plain URL (no preset uses one)
        return Path(download_pretrained(cfg))
    except Exception as e:  # network errors come in many types
        raise WeightsNotAvailableError(f"could not download the weights of {arch} / {tag} from {where}: {e}; "
                                       f"{save_hint(arch, tag)}") from e


_TEXT_TOWER = ("transformer.", "token_embedding.", "positional_embedding", "ln_final.", "text_projection")


def _tower(key: str) -> str:
    return "text" if key.startswith(_TEXT_TOWER) else "vision" if key.startswith("visual.") else "other"


def _checkpoint_shapes(path: Path) -> tuple[dict[str, tuple], dict | None]:
    """Tensor shapes of a checkpoint, and its state dict where reading the shapes needed it (pickles)."""
    if path.suffix == ".safetensors":
        from safetensors import safe_open
        try:
            with safe_open(str(path), framework="pt") as f:
                return {k.removeprefix("module."): tuple(f.get_slice(k).get_shape()) for k in f.keys()}, None
        except Exception as e:  # damaged headers raise several types
            raise ModelLoadError(f"the checkpoint {path} is damaged or not a model file ({type(e).__name__}: "
                                 f"{e}); download it again") from e
    state = _read_state_dict(path)
    return {k: tuple(v.shape) for k, v in state.items() if isinstance(v, torch.Tensor)}, state


def _read_state_dict(path: Path) -> dict:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file
            state = load_file(str(path))
        else:
            state = torch.load(str(path), map_location="cpu", weights_only=True)
            state = state.get("state_dict", state) if isinstance(state, dict) else state
    except pickle.UnpicklingError as e:  # torch's message suggests weights_only=False, which runs the file's code
        raise ModelLoadError(f"the checkpoint {path} holds Python objects besides tensors, and loading those "
                             "could run code from the file, so it was not loaded. Use a .safetensors file (or a "
                             "plain state dict of tensors) from a source you trust") from None
    except Exception as e:  # safetensors and pickle raise many types on damaged files
        raise ModelLoadError(f"the checkpoint {path} is damaged or not a model file ({type(e).__name__}: {e}); "
                             "download it again") from e
    if not isinstance(state, dict) or not state:
        raise ModelLoadError(f"the checkpoint {path} holds no weights")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _create(source: _Source, device: str):
    import open_clip
    from open_clip.model import CLIP

    try:
        with torch.device(device):
            if source.config is not None:
                fields = {k: v for k, v in source.config.items() if k in ("embed_dim", "vision_cfg", "text_cfg")}
                return CLIP(**fields, quick_gelu=source.quick_gelu)
            return open_clip.create_model(source.arch, load_weights=False, force_quick_gelu=source.quick_gelu,
                                          device=device)
    except Exception as e:
        raise ModelLoadError(f"cannot build the model {source.arch}: {type(e).__name__}: {e}") from e


def _build(source: _Source):
    """Check on the meta device (no memory), then build for real and load the weights."""
    blueprint = _create(source, "meta")
    weights_bytes = sum(p.numel() for p in blueprint.parameters()) * 4  # built in fp32
    _check_room(source, weights_bytes * (2 if source.weights is not None else 1))  # + the state dict
    expected = {k: tuple(v.shape) for k, v in blueprint.state_dict().items() if "attn_mask" not in k}
    shapes, state = _checkpoint_shapes(source.weights) if source.weights is not None else ({}, None)
    if source.weights is not None:
        _check_fit(source, expected, shapes)
    check_interrupt()  # each step below takes seconds for a big model: Cancel is seen between them
    clip = _create(source, "cpu")
    if source.weights is None:
        return clip
    check_interrupt()
    state = state if state is not None else _read_state_dict(source.weights)
    check_interrupt()
    try:
        clip.load_state_dict({k: v for k, v in state.items() if k in expected}, strict=False)
    except RuntimeError as e:
        raise ModelLoadError(f"the checkpoint {source.weights} does not fit {source.arch}: {e}") from e
    return clip


def _check_fit(source: _Source, expected: dict[str, tuple], shapes: dict[str, tuple]) -> None:
    """Shapes first (a wrong architecture or context length), then missing and unexpected keys by tower."""
    wrong = [k for k in expected if k in shapes and shapes[k] != expected[k]]
    positions = shapes.get("positional_embedding", (None,))[0], expected.get("positional_embedding", (None,))[0]
    if "positional_embedding" in wrong and positions[0] != positions[1]:
        fix = ("set text_cfg.context_length in its config to the checkpoint's" if source.config is not None
               else "it was trained as another architecture")
        raise ModelLoadError(f"the checkpoint {source.weights} has a context length of {positions[0]} text "
                             f"positions but {source.arch} has {positions[1]}: {fix}")
    if wrong:
        raise ModelLoadError(f"the checkpoint {source.weights} does not fit {source.arch}: "
                             + ", ".join(f"{k} is {list(shapes[k])}, not {list(expected[k])}" for k in wrong[:3])
                             + (f" (and {len(wrong) - 3} more)" if len(wrong) > 3 else "")
                             + "; choose the architecture the checkpoint was trained as")
    missing = [k for k in expected if k not in shapes]
    unexpected = [k for k in shapes if k not in expected]
    for keys, what in ((missing, "missing"), (unexpected, "unexpected")):
        for tower in ("text", "vision", "other"):
            of_tower = [k for k in keys if _tower(k) == tower]
            if of_tower and what == "missing" and tower == "text":
                raise ModelLoadError(f"the checkpoint {source.weights} does not fit {source.arch}: {len(of_tower)} "
                                     f"text-tower weights are missing ({', '.join(of_tower[:3])}…); PEZ needs them all")
            if of_tower:
                log.warning("%s: %d %s %s-tower weights (%s%s)%s", source.weights, len(of_tower), what, tower,
                            ", ".join(of_tower[:3]), "…" if len(of_tower) > 3 else "",
                            "; ignored" if what == "unexpected" else "; they keep their initial values"
                            + (", so image features mean nothing" if tower == "vision" else ""))


def _check_room(source: _Source, needed: int) -> None:
    from .objective import free_memory

    free = free_memory(torch.device("cpu"))
    if needed > free:
        raise ModelLoadError(f"{source.arch} needs about {needed / 2**30:.1f} GiB of memory to load, but only "
                             f"{free / 2**30:.1f} GiB are free; close other programs or choose a smaller model")
