"""ComfyUI glue shared by the PEZ nodes: common inputs, live progress, devices, UI payloads.

No PEZ algorithm lives here (that is pez_core); only what ComfyUI needs around it.
"""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import comfy.model_management as mm
import comfy.utils
import torch
from comfy_api.latest import io

from .. import pez_core
from .stop import stop_requested

log = logging.getLogger(__name__)
# pez_core's long loops (tokenizing big texts, downloads) see ComfyUI's Cancel
pez_core.set_interrupt_check(mm.throw_exception_if_processing_interrupted)

CATEGORY = "PEZ"
DEFAULTS = pez_core.PezConfig()
SEED_MAX = 0xFFFFFFFFFFFFFFFF
LIVE_EVERY_S = 0.25        # pez.progress + progress text: at most 4 a second
BAR_EVERY_S = 0.1          # the node's progress bar
GIB = 1 << 30
TIME_BUDGET_MAX = 24 * 3600.0

PezModelType = io.Custom("PEZ_MODEL")


def node_schema(node_id: str, display_name: str, description: str, inputs: list[io.Input],
                outputs: list[io.Output], **extra: Any) -> io.Schema:
    """A PEZ node: in the PEZ category, an output node (its result shows on the node), told its own id."""
    return io.Schema(node_id=node_id, display_name=display_name, category=CATEGORY, description=description,
                     inputs=inputs, outputs=outputs, hidden=[io.Hidden.unique_id], is_output_node=True, **extra)


# --- inputs shared by the optimising nodes (defaults and limits from pez_core) -----------------------
def model_input() -> io.Input:
    return PezModelType.Input("pez_model", tooltip="The CLIP model from PEZ Load Model. Use the CLIP your "
                              "diffusion model reads prompts with (ViT-L-14 · openai for SD 1.x, SDXL and Flux).")


def prompt_length_input(tooltip: str | None = None) -> io.Input:
    return io.Int.Input("prompt_length", default=DEFAULTS.prompt_len, min=1, max=pez_core.MAX_PROMPT_TOKENS,
                        tooltip=tooltip or (
        f"Length of the learned prompt in CLIP tokens. {DEFAULTS.prompt_len} named the object best in our "
        "measurements; 16 (the PEZ paper's) transfers best between models but adds stray words; at most "
        f"{pez_core.MAX_PROMPT_TOKENS} (CLIP's limit)."))


def steps_input() -> io.Input:
    return io.Int.Input("steps", default=DEFAULTS.steps, min=1, max=pez_core.MAX_STEPS, tooltip=(
        f"Optimisation steps. {DEFAULTS.steps} is the paper's default; a few hundred give a usable draft. "
        "The node shows the best prompt so far while it runs; Cancel stops it (without a result)."))


def restarts_input() -> io.Input:
    auto = DEFAULTS.for_device(torch.device("cuda")).restarts, DEFAULTS.for_device(torch.device("cpu")).restarts
    return io.Int.Input("restarts", default=0, min=0, max=pez_core.MAX_RESTARTS, tooltip=(
        f"Random starts optimised side by side; the best wins. 0 = auto ({auto[0]} on a GPU, {auto[1]} on the "
        "CPU). More restarts find better prompts and cost memory and time."))


def learning_rate_input() -> io.Input:
    low, high = pez_core.LR_RANGE
    return io.Float.Input("learning_rate", default=DEFAULTS.lr, min=low, max=high, step=0.01, round=0.001,
                          tooltip=f"AdamW learning rate of the soft prompt (the paper uses {DEFAULTS.lr}).")


def seed_input() -> io.Input:
    return io.Int.Input("seed", default=DEFAULTS.seed, min=0, max=SEED_MAX, control_after_generate=True,
                        tooltip="Seed of the random starting prompt: the same seed and settings give the same prompt.")


def vocabulary_input() -> io.Input:
    return io.Combo.Input("vocabulary", options=list(pez_core.VOCAB_MODES), default=DEFAULTS.vocab, tooltip=(
        "Tokens PEZ may use. words: whole lowercase words (readable prompts); ascii: any printable "
        "token, incl. word pieces and punctuation; full: every CLIP token, incl. emoji and other scripts "
        "(highest similarity, least readable)."))


def blocklist_input() -> io.Input:
    return io.String.Input("blocklist", multiline=True, default="", optional=True, tooltip=(
        "Words the prompt must never contain, separated by commas or new lines "
        "(e.g. artist names or unwanted words). Every CLIP token of these words is banned."))


def negative_inputs() -> list[io.Input]:
    return [
        io.Image.Input("negative_images", optional=True, tooltip=(
            "Optional images the prompt should NOT describe: their features push the prompt away. Together "
            "with negative_text they weigh "
            f"{pez_core.DEFAULT_NEGATIVE_WEIGHT}: the similarity to the images minus "
            f"{pez_core.DEFAULT_NEGATIVE_WEIGHT} x the mean similarity to the negatives, however many.")),
        io.String.Input("negative_text", multiline=True, default="", optional=True, tooltip=(
            "Optional text the prompt should move away from (e.g. 'blurry, watermark'). Empty: none.")),
    ]


def stopping_inputs() -> list[io.Input]:
    """Polishing and the stopping rules: optional, appended after every older input."""
    return [
        io.Combo.Input("polish", options=list(pez_core.POLISH_MODES), default=DEFAULTS.polish, optional=True,
                       tooltip=(
            "After the PEZ steps. swap+prune (default: named the object best at 3000 steps in our "
            "measurements, with fewer words than swap) tries gradient-ranked token swaps (also after "
            "trying another word at each position in turn, kept only when better), then drops tokens costing at most "
            f"{pez_core.PRUNE_BUDGET:.0%} of the similarity in all; swap: swaps only; prune: drops only "
            "tokens that do not pay; off: PEZ's prompt as it is. Never scores below PEZ's own prompt.")),
        io.Float.Input("time_budget", default=0.0, min=0.0, max=TIME_BUDGET_MAX, step=1.0, optional=True, tooltip=(
            "Seconds for the whole run, polishing included; by then the node returns its best prompt. "
            "0 = no limit (steps decide). With a limit, the prompt depends on the machine's speed; "
            "without one, a fixed seed always gives the same prompt.")),
        io.Float.Input("target_similarity", default=0.0, min=0.0, max=1.0, step=0.01, round=0.001, optional=True,
                       tooltip="Stop as soon as the prompt reaches this similarity. 0 = no target."),
    ]


def make_config(*, prompt_length: int, steps: int, seed: int, vocabulary: str, restarts: int = 0,
                learning_rate: float = DEFAULTS.lr, blocklist: str | None = "", polish: str | None = None,
                time_budget: float | None = 0.0, target_similarity: float | None = 0.0) -> pez_core.PezConfig:
    """The widgets' values as a PezConfig (0 restarts: the engine's choice for the device; a time budget or
    target of 0: none), checked at once: ComfyUI does not apply a widget's min/max to a linked value, so this
    is where e.g. 3000 restarts stop."""
    polish = polish or DEFAULTS.polish
    check_choice("polish", polish, pez_core.POLISH_MODES)
    config = pez_core.PezConfig(
        prompt_len=prompt_length, steps=steps, restarts=restarts or None, lr=learning_rate, seed=seed,
        vocab=vocabulary, blocklist=pez_core.check_text(blocklist or "", "blocklist").strip() or None, polish=polish,
        time_budget=time_budget or None, target_similarity=target_similarity or None)
    config.validate()
    return config


def check_choice(name: str, value: Any, options: Sequence[str]) -> None:
    """In execute, for a second combo of a node: ComfyUI 0.3.75 reports a validate_inputs failure against
    every input the function takes, so each node validates one combo there and checks any other here."""
    if value not in options:
        raise pez_core.PezError(f"{name} {value!r} is not one of: {', '.join(map(str, options))}")


def check_choices(**checks: tuple[Any, Sequence[str]]) -> bool | str:
    """validate_inputs helper: ComfyUI 0.3.75 does not check V3 combo values itself. ``name=(value,
    options)``; a value may be a list (list inputs) and is None when linked. True, or what is wrong."""
    for name, (value, options) in checks.items():
        for v in value if isinstance(value, list) else [value]:
            if v is not None and v not in options:
                return f"{name} {v!r} is not one of: {', '.join(map(str, options))}"
    return True


# --- list inputs (nodes with is_input_list=True get every input as a list) -------------------------
def first(value: Any, default: Any = None) -> Any:
    """The first item of a list input (or the value itself); ``default`` when absent or empty."""
    if isinstance(value, list):
        return value[0] if value else default
    return default if value is None else value


def images_of(value: Any, name: str = "images") -> list[torch.Tensor]:
    """IMAGE input(s) — a (B, H, W, C) batch, or a list of batches of different sizes — as a list of
    (H, W, C) tensors, cloned outside inference mode (ComfyUI hands nodes inference tensors); errors name
    the input ``name``. Call inside ``torch.inference_mode(False)``."""
    if value is None:
        return []
    batches = value if isinstance(value, list) else [value]
    images: list[torch.Tensor] = []
    for batch in batches:
        if batch is None:
            continue
        if not isinstance(batch, torch.Tensor):
            raise pez_core.PezError(f"{name}: expected an IMAGE, got {type(batch).__name__}")
        images.extend([batch.clone()] if batch.ndim == 3 else list(batch.clone()))
    for i, image in enumerate(images):
        if image.is_floating_point() and not torch.isfinite(image).all():
            which = f"image {i + 1} of {len(images)}" if len(images) > 1 else "the image"
            raise pez_core.PezError(f"{name}: {which} contains NaN or infinite values; check the node that made it")
    return images


def texts_of(value: Any, name: str = "text") -> list[str]:
    """Non-blank strings of a STRING input that may be a list; bounded, and refused (naming ``name``) when
    CLIP would read nothing in them."""
    values = value if isinstance(value, list) else [value]
    texts = [pez_core.check_text(v, name) for v in values if isinstance(v, str) and v.strip()]
    for text in texts:
        require_tokens(text, name)
    return texts


def require_tokens(text: str, name: str) -> str:
    """``text``, or an error naming the input when CLIP reads no token in it (e.g. only control characters)."""
    if not pez_core.clip_tokenizer().encode(text, name):
        raise pez_core.PezError(f"{name} is empty to CLIP (only whitespace or characters it drops); give it some words")
    return text


# --- devices and memory -------------------------------------------------------------------------------
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


# --- live progress -------------------------------------------------------------------------------------
class LiveProgress:
    """pez_core callback: ComfyUI progress bar + cancel, and the live text for the PEZ web extension.

    Every call checks for Cancel (raising ComfyUI's InterruptProcessingException through pez_core).
    At most every 0.1 s the progress bar moves (websocket ``progress``); at most every 0.25 s (and at
    the last step) the web extension gets ``pez.progress`` and the node shows a progress text.
    """

    def __init__(self, unique_id: Any, total: int):
        self.node = None if unique_id is None else str(unique_id)
        self.bar = comfy.utils.ProgressBar(total)
        self._bar_at = self._live_at = 0.0

    def __call__(self, progress: pez_core.Progress) -> bool:
        mm.throw_exception_if_processing_interrupted()
        now = time.monotonic()
        polishing = getattr(progress, "stage", "pez") == "polishing"
        last = progress.step >= progress.total and not polishing  # polishing reports at the last step, throttled
        if last or now - self._bar_at >= BAR_EVERY_S:
            self._bar_at = now
            self.bar.update_absolute(progress.step, progress.total)
        if last or now - self._live_at >= LIVE_EVERY_S:
            self._live_at = now
            send_live(self.node, progress)
        return stop_requested(self.node)  # "stop & use best": True ends the run with the best so far


def send_live(node: str | None, progress: pez_core.Progress) -> None:
    """``pez.progress`` for the web extension and the node's progress text. "prompt" is the best prompt so
    far (of the first image in a batch; "prompts"/"similarities" hold one per image), "similarity" the mean."""
    server = _server()
    if server is None or node is None:
        return
    from comfy_execution.utils import get_executing_context

    context = get_executing_context()
    step, total = int(progress.step), int(progress.total)
    similarity, prompt = float(progress.similarity), progress.prompt
    stage = getattr(progress, "stage", "pez")
    server.send_sync("pez.progress", {"stage": stage,
        "node": node, "display_node": node, "step": step, "total": total, "similarity": similarity,
        "prompt": prompt, "prompt_id": context.prompt_id if context is not None else server.last_prompt_id,
        "prompts": list(progress.prompts), "similarities": [float(s) for s in progress.similarities],
    }, server.client_id)
    where = "polishing" if stage == "polishing" else f"step {step}/{total}"
    server.send_progress_text(f"{where} · sim {similarity:.3f}\n{prompt}", node)


def send_node_text(node: Any, text: str) -> None:
    """A text shown on the node (ComfyUI's progress-text channel)."""
    server = _server()
    if server is not None and node is not None:
        server.send_progress_text(text, str(node))


def _server() -> Any:
    try:
        from server import PromptServer
    except ImportError:  # not inside a ComfyUI server
        return None
    return getattr(PromptServer, "instance", None)


# --- UI payload ---------------------------------------------------------------------------------------
def text_ui(prompts: Sequence[str], similarities: Sequence[float],
            results: Sequence[pez_core.PezResult] = ()) -> dict[str, list]:
    """The UI output of every text-producing PEZ node: one string and one similarity per prompt; with
    several models (PEZ Combine Models), also each model's similarity per prompt, in model order."""
    ui = {"text": [str(p) for p in prompts], "pez_similarity": [float(s) for s in similarities]}
    per_model = [list(getattr(r, "similarities", [])) for r in results]
    if any(per_model):
        ui["pez_model_similarities"] = per_model
    return ui


def log_results(node: str, results: Sequence[pez_core.PezResult]) -> None:
    for r in results:
        each = getattr(r, "similarities", None)
        log.info("%s: %r (similarity %.4f%s, %d steps, %.1f s%s)", node, r.prompt, r.similarity,
                 f"; per model {', '.join(f'{s:.4f}' for s in each)}" if each else "", r.steps,
                 r.seconds, ", stopped early" if r.stopped_early else "")

