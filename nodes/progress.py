"""What a running PEZ node shows: the progress bar, Cancel, live best prompts, and its result on the node."""
from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from typing import Any

import comfy.model_management as mm
import comfy.utils

from .. import pez_core
from .server import prompt_server
from .stop import stop_requested

log = logging.getLogger(__name__)

LIVE_EVERY_S = 0.25        # pez.progress + progress text: at most 4 a second
BAR_EVERY_S = 0.1          # the node's progress bar


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
    server = prompt_server()
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


def text_ui(prompts: Sequence[str], similarities: Sequence[float],
            results: Sequence[pez_core.PezResult] = (), total: int | None = None) -> dict[str, list]:
    """The UI output of every text-producing PEZ node: one string and one similarity per prompt; with
    several models (PEZ Combine Models), also each model's similarity per prompt, in model order; with the
    fluency prior, each prompt's perplexity under it; with ``total`` (the steps asked for), where each run
    ended; with a reference (``PezResult.reference_similarity``), what a plain caption scores against the same
    targets, one {"caption", "similarity"} per prompt."""
    ui = {"text": [str(p) for p in prompts], "pez_similarity": [float(s) for s in similarities]}
    per_model = [list(getattr(r, "similarities", [])) for r in results]
    if any(per_model):
        ui["pez_model_similarities"] = per_model
    if any(r.perplexity is not None for r in results):
        ui["pez_perplexity"] = [r.perplexity for r in results]
    if results and total:
        ui["pez_ended"] = [ended(r, total) for r in results]
    if results and all(getattr(r, "reference_similarity", None) is not None for r in results):
        ui["pez_reference"] = [{"caption": str(r.reference_caption), "similarity": float(r.reference_similarity)}
                               for r in results]
    return ui


def ended(result: pez_core.PezResult, total: int) -> str:
    """Which stage and step a run ended at: "stopped at step 68 of 3000", "stopped while polishing, after 3000
    steps", or "3000 steps, then polishing"."""
    if result.stopped_early and result.steps < total:
        return f"stopped at step {result.steps} of {total}"
    polished = result.unpolished_prompt is not None
    if result.stopped_early and polished:
        return f"stopped while polishing, after {result.steps} steps"
    return f"{result.steps} steps" + (", then polishing" if polished else "")


def log_results(node: str, results: Sequence[pez_core.PezResult]) -> None:
    for r in results:
        each = getattr(r, "similarities", None)
        log.info("%s: %r (similarity %.4f%s%s%s, %d steps, %.1f s%s)", node, r.prompt, r.similarity,
                 f"; per model {', '.join(f'{s:.4f}' for s in each)}" if each else "",
                 f"; plain caption {r.reference_caption!r}: {r.reference_similarity:.4f}"
                 if getattr(r, "reference_similarity", None) is not None else "",
                 f"; perplexity {r.perplexity:.1f} under {r.fluency_model}" if r.perplexity is not None else "", r.steps,
                 r.seconds, ", stopped early" if r.stopped_early else "")
