"""PEZ Load Model: a preset, a bundled model, or a checkpoint from the ``pez`` model folder."""
from __future__ import annotations

import functools
import logging
import os
import time
from pathlib import Path
from typing import Any

import comfy.model_management as mm
import comfy.utils
import folder_paths
from comfy_api.latest import io

from .. import pez_core
from .config import check_choice
from .progress import BAR_EVERY_S
from .schema import CATEGORY, PezModelType, search_aliases
from .server import prompt_server, send_node_text

log = logging.getLogger(__name__)

FOLDER = "pez"
DEVICES = ("auto", "cpu")


def register_model_folder() -> None:
    """``models/pez`` as ComfyUI model folder "pez" (extra_model_paths.yaml may add more folders)."""
    path = os.path.join(folder_paths.models_dir, FOLDER)
    folder_paths.add_model_folder_path(FOLDER, path)
    try:
        os.makedirs(path, exist_ok=True)  # so users see where checkpoints go
    except OSError:
        pass


register_model_folder()


def release_cache_on_unload() -> None:
    """Let ComfyUI's "Unload models" and "Free model and node cache" (the /free route) free PEZ models too.

    Workaround (ComfyUI 0.3.75 to 0.33.0): they offer custom nodes no release hook; both call
    ``comfy.model_management.unload_all_models()`` through the module for those buttons (and after an
    out-of-memory error), and restore only ``cast_to`` after custom nodes. So this wraps that one function:
    ComfyUI's unloading runs first, unchanged; then the PEZ cache is dropped, its text towers leave the GPU,
    and the models' memory returns once ComfyUI's node cache lets go of them too (it does on "Free").
    """
    original = mm.unload_all_models
    if getattr(original, "pez_releases_cache", False):
        return

    @functools.wraps(original)
    def unload_all_models(*args: Any, **kwargs: Any) -> Any:
        result = original(*args, **kwargs)
        for model in pez_core.cached_models():
            model.offload("cpu")
        dropped = pez_core.clear_cache()
        if dropped:
            log.info("PEZ: released %d cached model(s) with ComfyUI's unload", dropped)
        return result

    unload_all_models.pez_releases_cache = True  # type: ignore[attr-defined]
    mm.unload_all_models = unload_all_models


release_cache_on_unload()


class DownloadOnNode:
    """pez_core download watcher: the size as node text and in the log, the bytes on the node's progress bar."""

    def __init__(self, unique_id: Any):
        self.node, self.bar, self.total = unique_id, None, 0
        self._at = 0.0

    def announce(self, text: str) -> None:
        send_node_text(self.node, f"{text}; Cancel stops it")

    def progress(self, done: int, total: int) -> None:
        now = time.monotonic()
        if self.bar is None or total != self.total:
            self.bar, self.total = comfy.utils.ProgressBar(total), total
        if now - self._at >= BAR_EVERY_S or done >= total:
            self._at = now
            self.bar.update_absolute(done, total)


def model_folders() -> str:
    return ", ".join(folder_paths.get_folder_paths(FOLDER))


def checkpoint_files() -> list[str]:
    return [f for f in folder_paths.get_filename_list(FOLDER) if f.lower().endswith(pez_core.CHECKPOINT_SUFFIXES)]


def model_options() -> list[str]:
    return [*pez_core.PRESETS, *pez_core.JOINT_PRESETS, *pez_core.bundled_models(), *checkpoint_files()]


def _local_preset_file(name: str) -> str | None:
    """A preset's weights in the pez folder: saved as <arch>-<tag>.<suffix> (what the offline error asks for), or
    under another name with the preset's architecture in its tensors (a browser names the download after its
    URL, e.g. open_clip_model.safetensors). Two such files and none named after the preset: an error."""
    preset, files = pez_core.PRESETS[name], checkpoint_files()
    for file in files:
        if Path(file).stem == preset.file_stem:
            return folder_paths.get_full_path_or_raise(FOLDER, file)
    paths = {file: folder_paths.get_full_path_or_raise(FOLDER, file) for file in files}
    found = [file for file, path in paths.items() if pez_core.preset_of_checkpoint(path) == name]
    if len(found) > 1:
        raise pez_core.PezError(
            f"{', '.join(found)} in the pez model folder all hold {preset.arch} weights, so which is {name} is "
            f"unclear: rename that one to {preset.file_stem}{Path(found[0]).suffix}")
    if found:
        log.info("PEZ: %s holds %s weights: using it for %s", found[0], preset.arch, name)
        return paths[found[0]]
    return None


def _present(name: str) -> bool:
    """Whether a preset (each part of a joint one) loads without a download."""
    parts = pez_core.JOINT_PRESETS[name].parts if name in pez_core.JOINT_PRESETS else (name,)
    try:
        return all(_local_preset_file(part) or pez_core.preset_is_cached(part) for part in parts)
    except pez_core.PezError:  # ambiguous files: loading says which to rename
        return False


def option_labels() -> dict[str, str]:
    """What the model dropdown shows for each value (web/js/pez.js reads them from ROUTE): whether a preset
    is here or how much it downloads, and which entry is a toy."""
    labels = {}
    for name in [*pez_core.PRESETS, *pez_core.JOINT_PRESETS]:
        parts = pez_core.JOINT_PRESETS[name].parts if name in pez_core.JOINT_PRESETS else (name,)
        size = sum(pez_core.PRESETS[part].download_bytes for part in parts)
        labels[name] = f"{name} · downloaded" if _present(name) else f"{name} · download {size / 1e9:.1f} GB"
    for name in pez_core.bundled_models():
        labels[name] = f"{name} · toy demo, offline"
    return labels


def default_model() -> str:
    """The preset most diffusion models read prompts with when it is here, else the offline demo: a new node
    runs as added."""
    if pez_core.DEFAULT_MODEL in model_options() and _present(pez_core.DEFAULT_MODEL):
        return pez_core.DEFAULT_MODEL
    return next(iter(pez_core.bundled_models()), pez_core.DEFAULT_MODEL)


def resolve(name: str) -> str:
    """The name or path pez_core.load_model takes for a dropdown value; actionable errors otherwise."""
    if not isinstance(name, str):
        raise pez_core.PezError(not_a_name(name))
    if name in pez_core.PRESETS:
        return _local_preset_file(name) or name
    if name in pez_core.bundled_models():
        return name
    if name in checkpoint_files():
        return folder_paths.get_full_path_or_raise(FOLDER, name)
    preset = pez_core.preset_of_file(name)
    if preset is not None:  # an example's weights file the missing-models dialog offers, not downloaded yet
        log.debug("PEZ: %s is not in the pez model folder; loading the preset %s instead", name, preset)
        return _local_preset_file(preset) or preset
    raise pez_core.PezError(
        f"model {name!r} not found: it is no preset or bundled model, and no such checkpoint is in the pez "
        f"model folder ({model_folders()}). Put the checkpoint there (with its open_clip config <name>.json "
        f"beside it, or a name starting with its architecture, e.g. ViT-L-14-openai.safetensors), then "
        f"refresh the browser (R), or choose one of: {', '.join(model_options())}")


def where_to_put(error: pez_core.WeightsNotAvailableError) -> str:
    """The library's error for weights that are not here, in this ComfyUI's words: which files, and that
    they work in models/pez under any name (the browser's own included)."""
    if not error.files:
        return f"{error} This ComfyUI's pez model folders: {model_folders()}."
    urls = "; ".join(f.url + (f" ({pez_core.size_text(f.size)})" if f.size else "") for f in error.files)
    if len(error.files) == 1:
        save = (f"save it as models/pez/{error.files[0].file_name} or under any other name (the browser's own "
                "works), then press R in the browser to list it")
    else:
        names = " and ".join(f.file_name for f in error.files)
        save = (f"save them in models/pez as {names} or under any other names (the browser's own work), then "
                "press R in the browser to list them")
    return (f"{error.reason}. Download {urls}; {save}. Or {error.retry}. "
            f"This ComfyUI's pez model folders: {model_folders()}.")


def not_a_name(value: Any) -> str:
    """What to say when the model input is no text (e.g. ``"model": 42`` through the API)."""
    return (f"model must be a model name (text), got {type(value).__name__} {repr(value)[:60]}; choose one of: "
            f"{', '.join(model_options())}")


class LoadModel(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        serves = "; ".join(f"{name}: {p.serves}" for name, p in pez_core.PRESETS.items())
        return io.Schema(
            **search_aliases("PEZ_LoadModel"),
            node_id="PEZ_LoadModel",
            display_name="PEZ Load Model",
            category=CATEGORY,
            description="Load an OpenCLIP model for the PEZ nodes. Learn prompts with the CLIP your diffusion "
                        "model reads them with.",
            inputs=[
                io.Combo.Input("model", options=model_options(), default=default_model(), tooltip=(
                    f"Which CLIP to learn prompts for — {serves}. Presets download once into the Hugging Face "
                    f"cache; offline, put their weights file into models/pez under any name. Bundled models "
                    f"work offline. Checkpoints "
                    f"in models/pez (with a <name>.json open_clip config beside them) are listed too.")),
                io.Combo.Input("precision", options=list(pez_core.PRECISIONS), default="auto", tooltip=(
                    "Weights' precision. auto: bf16 (or fp16) on a GPU, fp32 on the CPU.")),
                io.Combo.Input("device", options=list(DEVICES), default="auto", tooltip=(
                    "auto: ComfyUI's device (the GPU when there is one). cpu: keep the GPU free (slow).")),
            ],
            outputs=[PezModelType.Output("pez_model", display_name="pez_model",
                                         tooltip="The loaded model, for the other PEZ nodes.")],
            hidden=[io.Hidden.unique_id],  # download size and progress show on the node
        )

    @classmethod
    def validate_inputs(cls, model) -> bool | str:
        # Workarounds. Taking `model` here keeps ComfyUI (0.33+) from refusing an unknown name with a bare "not in list":
        # execute() says precisely what is missing and where it must go. Precision and device are checked in
        # execute, so that an error names only the input at fault (0.3.75 names every input taken here).
        # A value that is no text (42 through the API) is refused here, before anything runs; None: linked.
        return True if model is None or isinstance(model, str) else not_a_name(model)

    @classmethod
    def fingerprint_inputs(cls, model: str, precision: str, device: str) -> Any:
        """A checkpoint replaced on disk (other size or mtime) makes ComfyUI run the node again."""
        try:
            path = Path(resolve(model))
            stat = path.stat() if path.is_file() else None
        except (pez_core.PezError, OSError):
            return model
        return (model, stat.st_size, stat.st_mtime_ns) if stat else model

    @classmethod
    def execute(cls, model: str, precision: str, device: str) -> io.NodeOutput:
        check_choice("precision", precision, pez_core.PRECISIONS)
        check_choice("device", device, DEVICES)
        target = mm.get_torch_device() if device == "auto" else device
        try:
            watcher = DownloadOnNode(cls.hidden.unique_id)
            # each part of a joint preset from the pez folder when saved there, as a preset is
            loaded = pez_core.load_model(model, device=target, precision=precision, watcher=watcher, locate=resolve)
        except pez_core.WeightsNotAvailableError as e:
            raise pez_core.WeightsNotAvailableError(where_to_put(e), e.files, e.reason, e.retry) from None
        log.info("PEZ Load Model: %s", loaded)
        return io.NodeOutput(loaded)


ROUTE = "/pez/model_labels"


def register_routes() -> None:
    """GET ROUTE: the model dropdown's labels, asked again when the browser refreshes its node list."""
    server = prompt_server()
    if server is None or getattr(server, "routes", None) is None:
        return
    from aiohttp import web

    async def labels(request: web.Request) -> web.Response:
        return web.json_response(option_labels())

    server.routes.get(ROUTE)(labels)


register_routes()
