"""Loading OpenCLIP models for PEZ: names to weights, checks, and the cache (open_clip's ``factory.py``).

``load_model`` accepts a preset (``"ViT-L-14 · openai"``), a joint preset (several CLIPs at once), a bundled
model (``"shapes-demo"``), an open_clip architecture with a pretrained tag, a file path or ``"none"`` (random
weights), or a checkpoint path on its own. The few most recently loaded models are cached per (model, weights
file and its size and mtime, device, precision).

A checkpoint's architecture comes from a config JSON beside it, else its name (``ViT-L-14-openai.safetensors``),
else its tensors' names and shapes matched against open_clip's configs (a file saved under its download's name,
``open_clip_model.safetensors``); QuickGELU, which no tensor shows, then comes from the project's preset.

A checkpoint is checked before it costs anything: its config's numbers, its tensors' shapes against
the architecture (built on the meta device, no memory) and the memory the model needs.
"""
from __future__ import annotations

import ctypes
import functools
import json
import logging
import math
import pickle
import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

import torch

from ..common import devices
from ..common.devices import hub_offline, resolve_device
from ..common.errors import MissingFile, ModelLoadError, PezError, WeightsNotAvailableError
from ..common.limits import check_interrupt
from .download import OFFLINE_RETRY, Watcher, file_url, hub_weights, missing_weights, size_text
from .joint import JointModel, combine
from .model import PezModel, resolve_dtype
from .presets import CHECKPOINT_SUFFIXES, DEFAULT_MODEL, JOINT_PRESETS, PRESETS, Preset, bundled_models, preset_of_weights

log = logging.getLogger(__name__)

# models kept loaded: two cover a workflow that alternates two CLIPs (e.g. SDXL's L and G encoders);
# every further one would hold 0.6-10 GB of RAM that nothing uses
MAX_CACHED_MODELS = 2
MAX_CONFIG_BYTES = 1 << 20  # an open_clip config is a few KB; a bigger "config" is another file
MAX_CONFIG_DEPTH = 8  # open_clip nests 3 deep (e.g. vision_cfg.timm_kwargs)
CONFIG_LIMITS = {"embed_dim": 8192, "width": 8192, "layers": 96, "heads": 128, "head_width": 1024,
                 "patch_size": 1024, "image_size": 4096, "mlp_ratio": 16}  # well above ViT-bigG's



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
               precision: str = "auto", watcher: Watcher | None = None,
               locate: Callable[[str], str] | None = None) -> PezModel | JointModel:
    """Load (or fetch from the cache) a model for PEZ. See the module docstring for ``name``;
    ``watcher`` hears about a download of pretrained weights (size first, then progress).
    A joint preset (``JOINT_PRESETS``) gives a ``JointModel`` of its parts; this is the one place that knows.
    ``locate`` maps a name (each part's, for a joint preset) to what to load, e.g. a saved copy of a preset's
    weights in a host application's model folder."""
    if isinstance(name, str) and name.strip() in JOINT_PRESETS and pretrained is None:
        return _load_joint(name.strip(), device, precision, watcher, locate)
    name = locate(name) if locate is not None else name
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


def _load_joint(name: str, device: str | torch.device, precision: str, watcher: Watcher | None,
                locate: Callable[[str], str] | None) -> JointModel:
    """A joint preset's parts. Every part's weights are looked for (and fetched) before any is built, so that
    one error names every file that is missing."""
    preset = JOINT_PRESETS[name]
    parts = [locate(part) if locate is not None else part for part in preset.parts]
    missing = []
    for part in parts:
        if part in PRESETS:  # the others are files or bundled models: found or not, their errors say so
            try:
                _tag_weights(PRESETS[part].arch, PRESETS[part].pretrained, watcher)
            except WeightsNotAvailableError as e:
                missing.append((PRESETS[part], e))
    if missing:
        raise _missing_weights(name, missing)
    return combine([load_model(part, None, device, precision, watcher) for part in parts], preset.weights)


def _missing_weights(name: str, missing: list[tuple[Preset, WeightsNotAvailableError]]) -> WeightsNotAvailableError:
    """One error for the weights files a model made of several lacks: each file, its size and where it is."""
    if len(missing) == 1:
        return missing[0][1]
    total = sum(p.download_bytes for p, _ in missing)
    reason = (f"{name} needs {len(missing)} weights files that are not on this machine"
              + (f" (about {size_text(total)} in all)" if total else ""))
    offline = hub_offline()
    if not offline:
        reason += f" (the first download failed: {missing[0][1].reason})"
    files = [file for _, e in missing for file in e.files]
    return missing_weights(reason, files, OFFLINE_RETRY if offline else "try again")


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
    """A checkpoint file with its architecture: a config JSON beside it, a known name prefix, or its tensors."""
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
    arch, quick_gelu = _arch_of_name(path.stem) or _arch_of_tensors(path)
    return _Source(arch, quick_gelu, weights=path)


def _arch_of_name(stem: str) -> tuple[str, bool] | None:
    """(architecture, QuickGELU) from a name ``<arch>[-<pretrained tag>]``, or None. The tag says QuickGELU
    (OpenAI's weights and some others were trained with it); a name without a known tag: "openai" in it."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    arches = sorted((a for a in open_clip.list_models() if stem.startswith(a)), key=len)
    if not arches:
        return None
    arch = arches[-1]
    tag = stem[len(arch):].lstrip("-_ ")
    if tag in open_clip.list_pretrained_tags_by_model(arch):
        return arch, bool(get_pretrained_cfg(arch, tag).get("quick_gelu", False))
    return arch, "openai" in stem


class _Layout(NamedTuple):
    """What an open_clip CLIP's tensor shapes show of its architecture (all but QuickGELU)."""
    embed_dim: int
    vision_width: int
    vision_layers: int
    patch_size: int
    image_size: int
    text_width: int
    text_layers: int
    context_length: int
    vocab_size: int

    def __str__(self) -> str:
        return (f"image tower: width {self.vision_width}, {self.vision_layers} layers, patch {self.patch_size}, "
                f"image {self.image_size}; text tower: width {self.text_width}, {self.text_layers} layers, "
                f"{self.context_length} positions, {self.vocab_size:,} tokens; {self.embed_dim} features")


def _layout_of_shapes(shapes: dict[str, tuple]) -> _Layout | None:
    """The layout of a state dict with a ViT image tower and open_clip's own text tower, or None."""
    def blocks(prefix: str) -> int:
        return len({k[len(prefix):].split(".", 1)[0] for k in shapes if k.startswith(prefix)})
    try:
        vision_width, _, patch, _ = shapes["visual.conv1.weight"]
        positions = shapes["visual.positional_embedding"][0]  # a class token and a square grid of patches
        vocab, text_width = shapes["token_embedding.weight"]
        context = shapes["positional_embedding"][0]
        embed_dim = shapes["text_projection"][1]
    except (KeyError, ValueError, IndexError):
        return None
    return _Layout(embed_dim, vision_width, blocks("visual.transformer.resblocks."), patch,
                   math.isqrt(max(positions - 1, 0)) * patch, text_width, blocks("transformer.resblocks."),
                   context, vocab)


def _layout_of_config(config: dict) -> _Layout | None:
    """The layout of an open_clip model config, or None where its towers are of another kind (timm, Hugging
    Face, ResNet, a custom text tower, a non-square image)."""
    from open_clip.model import CLIPTextCfg, CLIPVisionCfg

    try:
        vision, text = CLIPVisionCfg(**config["vision_cfg"]), CLIPTextCfg(**config["text_cfg"])
    except (KeyError, TypeError):
        return None
    if (config.get("custom_text") or vision.timm_model_name or text.hf_model_name
            or not isinstance(vision.layers, int)):
        return None
    sizes = [v if isinstance(v, int) else v[0] if len(set(v)) == 1 else None
             for v in (vision.image_size, vision.patch_size)]
    if None in sizes:
        return None
    image, patch = sizes
    return _Layout(config["embed_dim"], vision.width, vision.layers, patch, image // patch * patch,
                   text.width, text.layers, text.context_length, text.vocab_size)


@functools.lru_cache(maxsize=1)
def _open_clip_layouts() -> dict[str, _Layout]:
    """open_clip's architectures (their configs, nothing built) by layout."""
    import open_clip

    layouts = {name: _layout_of_config(open_clip.get_model_config(name) or {}) for name in open_clip.list_models()}
    return {name: layout for name, layout in layouts.items() if layout is not None}


def _families(layout: _Layout) -> list[list[str]]:
    """open_clip's architectures of this layout; those that differ only in QuickGELU together, the plain one first."""
    import open_clip

    families: dict[str, list[str]] = {}
    for name, other in _open_clip_layouts().items():
        if other == layout:
            config = open_clip.get_model_config(name)
            families.setdefault(json.dumps({k: v for k, v in config.items() if k != "quick_gelu"}, sort_keys=True),
                                []).append(name)
    return [sorted(f, key=lambda n: (bool(open_clip.get_model_config(n).get("quick_gelu")), len(n), n))
            for f in families.values()]


def _arch_of_tensors(path: Path) -> tuple[str, bool]:
    """(architecture, QuickGELU) of a checkpoint whose name says neither, from its tensors' names and shapes (a
    safetensors file's header only) matched against open_clip's configs; or an error saying what to name it."""
    layout = _layout_of_shapes(_checkpoint_shapes(path)[0])
    families = _families(layout) if layout is not None else []
    if len(families) == 1:
        return _choose_gelu(path, families[0])
    start = f"cannot tell the architecture of {path.name}: its name starts with no open_clip architecture and its"
    fix = (f"name it <architecture>-<pretrained tag>{path.suffix} (e.g. ViT-L-14-openai.safetensors) or put "
           f'{path.with_suffix(".json").name} beside it, e.g. {{"arch": "ViT-L-14", "quick_gelu": true}}')
    if layout is None:
        raise ModelLoadError(f"{start} tensors are not an open_clip CLIP's with a ViT image tower (a transformers "
                             f"or ComfyUI text-encoder file is not one): {fix}")
    if not families:
        raise ModelLoadError(f"{start} tensors ({layout}) fit none of open_clip's architectures: {fix}, or an "
                             "open_clip model config")
    names = " or ".join(f"{family[0]}{path.suffix}" for family in families)
    raise ModelLoadError(f"{start} tensors fit {len(families)} architectures: rename it to {names}, "
                         "whichever it is")


def _choose_gelu(path: Path, family: list[str]) -> tuple[str, bool]:
    """An architecture recognised by its tensors, and QuickGELU, which no tensor shows: as all open_clip's
    weights of that shape have it, else as the project's preset of that architecture, else an error."""
    import open_clip
    from open_clip.pretrained import get_pretrained_cfg

    arch, uses = family[0], {}  # uses: "<arch>-<tag>" -> trained with QuickGELU
    for name in family:
        own = bool(open_clip.get_model_config(name).get("quick_gelu"))
        tags = open_clip.list_pretrained_tags_by_model(name)
        uses.update({f"{name}-{tag}": bool(get_pretrained_cfg(name, tag).get("quick_gelu", own)) for tag in tags}
                    or {name: own})
    if len(set(uses.values())) == 1:
        log.info("%s: %s, told by its tensors", path.name, arch)
        return arch, next(iter(uses.values()))
    by_preset = {uses.get(f"{p.arch}-{p.pretrained}", False): name for name, p in PRESETS.items() if p.arch in family}
    if len(by_preset) == 1:
        [(quick_gelu, preset)] = by_preset.items()
        log.info("%s: %s, told by its tensors; %s as the preset %s (the tensors cannot tell); if it holds other "
                 "weights, name it <architecture>-<pretrained tag>%s, e.g. %s%s", path.name, arch,
                 "QuickGELU" if quick_gelu else "GELU", preset, path.suffix, PRESETS[preset].file_stem, path.suffix)
        return arch, quick_gelu
    raise ModelLoadError(_gelu_unknown(path, arch, uses))


def _gelu_unknown(path: Path, arch: str, uses: dict[str, bool]) -> str:
    """The error for weights of an architecture trained both with and without QuickGELU: the names to give."""
    def example(quick: bool) -> str:
        names = sorted((n for n, q in uses.items() if q == quick), key=lambda n: ("openai" not in n, len(n), n))
        return f"{names[0]}{path.suffix}"
    tags = sorted(uses)
    return (f"cannot tell the architecture of {path.name} for sure: its tensors are {arch}'s, but no tensor shows "
            f"whether it was trained with QuickGELU, and {arch}'s weights differ in that: rename it to "
            f"{example(True)} (QuickGELU) or {example(False)} (GELU), or another <architecture>-<pretrained tag>"
            f"{path.suffix} after the weights it holds: {', '.join(tags[:12])}{' …' if len(tags) > 12 else ''}")


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


def _hub_files(arch: str, tag: str) -> tuple[str, list[str]]:
    """The Hugging Face repo of a pretrained tag's weights ("" if none) and the file names to look for there."""
    from open_clip.pretrained import get_pretrained_cfg

    hub = get_pretrained_cfg(arch, tag).get("hf_hub", "")
    repo_id, filename = (hub.rsplit("/", 1) + [""])[:2] if hub else ("", "")
    # open_clip prefers a safetensors twin of a pickle, and so do we (no code runs when it loads)
    return repo_id, [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]


def _cached_tag_weights(arch: str, tag: str) -> Path | None:
    """A pretrained tag's weights in the Hugging Face cache, or None (no network: the cache only)."""
    repo_id, candidates = _hub_files(arch, tag)
    if repo_id:
        from huggingface_hub import try_to_load_from_cache
        for candidate in candidates:
            cached = try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str):
                return Path(cached)
    return None


def preset_is_cached(name: str) -> bool:
    """Whether a preset (every part of a joint one) can load from the Hugging Face cache without a download."""
    parts = JOINT_PRESETS[name].parts if name in JOINT_PRESETS else (name,)
    return all(_cached_tag_weights(PRESETS[p].arch, PRESETS[p].pretrained) is not None for p in parts)


def preset_of_checkpoint(path: str | Path) -> str | None:
    """The preset whose architecture a checkpoint's tensors show, whatever the file is called (a browser saves
    a preset's weights under the URL's name, e.g. open_clip_model.safetensors), or None. Reads a safetensors
    header only; another kind of file, or one that is not a CLIP: None."""
    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        return None
    try:
        layout = _layout_of_shapes(_checkpoint_shapes(path)[0])
    except ModelLoadError:
        return None
    arches = {arch for family in _families(layout) for arch in family} if layout is not None else set()
    return next((name for name, p in PRESETS.items() if p.arch in arches), None)


def _tag_weights(arch: str, tag: str, watcher: Watcher | None = None) -> Path:
    """Local path of a pretrained tag's weights; downloads when online (sized, watched, cancellable),
    a clear error naming the file to save and where when offline or when the download fails."""
    from open_clip.pretrained import download_pretrained, get_pretrained_cfg

    cfg = get_pretrained_cfg(arch, tag)
    repo_id, candidates = _hub_files(arch, tag)
    cached = _cached_tag_weights(arch, tag)
    if cached is not None:
        return cached
    preset = preset_of_weights(arch, tag)
    size = preset.download_bytes if preset is not None else 0
    url = file_url(repo_id, candidates[0]) if repo_id else cfg.get("url", "")
    file = MissingFile(f"{arch} / {tag}", url, f"{arch}-{tag}.safetensors", size)
    if hub_offline():
        about = f" (about {size_text(size)})" if size else ""
        raise missing_weights(f"the weights of {arch} / {tag}{about} are not on this machine and HF_HUB_OFFLINE "
                              "is set", [file], OFFLINE_RETRY)
    if repo_id:
        return hub_weights(repo_id, candidates, file=file, watcher=watcher)
    try:  # a plain URL (no preset uses one)
        return Path(download_pretrained(cfg))
    except Exception as e:  # network errors come in many types
        raise missing_weights(f"could not download the weights of {arch} / {tag} ({e})", [file], "try again") from e


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
    except pickle.UnpicklingError:  # torch's message suggests weights_only=False, which runs the file's code
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
    free = devices.free_memory(torch.device("cpu"))
    if needed > free:
        raise ModelLoadError(f"{source.arch} needs about {needed / 2**30:.1f} GiB of memory to load, but only "
                             f"{free / 2**30:.1f} GiB are free; close other programs or choose a smaller model")
