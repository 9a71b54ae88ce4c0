"""The whole PEZ step as one CUDA graph.

A PEZ step is a few hundred small kernels; eagerly, a GPU spends most of it waiting for Python
and kernel launches. Every tensor a step touches is allocated once (see ``engine._Run``) and
updated in place, so the step can be captured once and replayed. Warm-up steps run on a side
stream first, as CUDA graph capture requires; they are real steps and are counted.
"""
from __future__ import annotations

import logging
from typing import Callable

import torch

log = logging.getLogger(__name__)

WARMUP_STEPS = 3
_disabled_reason: str | None = None  # set to turn capture off, e.g. in equivalence tests


def set_enabled(enabled: bool) -> None:
    global _disabled_reason
    _disabled_reason = None if enabled else "disabled by set_enabled(False)"


def _why_not(run, steps: int) -> str | None:
    if run.model.device.type != "cuda":
        return f"device is {run.model.device.type}"
    if _disabled_reason:
        return _disabled_reason
    if steps <= WARMUP_STEPS + 1:
        return "too few steps to pay for a capture"
    return None


def graphed_step(run, steps: int) -> tuple[Callable[[], None], int]:
    """(a function doing one step, how many steps already ran). Falls back to eager with the reason logged."""
    reason = _why_not(run, steps)
    if reason:
        log.debug("eager steps: %s", reason)
        return run.step, 0
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(WARMUP_STEPS):
            run.step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        # thread_local: a server's other threads may use CUDA while this one captures
        with torch.cuda.graph(graph, capture_error_mode="thread_local"):
            run.step()
    except RuntimeError as e:  # capture can fail on exotic models or drivers: stay correct, go eager
        log.warning("CUDA graph capture failed, running eagerly: %s", e)
        torch.cuda.synchronize()
        return run.step, WARMUP_STEPS
    log.info("PEZ step captured as one CUDA graph")
    return graph.replay, WARMUP_STEPS
